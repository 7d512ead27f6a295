"""The CPU fast path (`model.score_net_cpu`) against `ScoreNet`, its oracle: the same eps to fp32 rounding (1e-5) on
random and shipped weights, cached or not, over one tile or many; the same audio through the samplers' windows and
through `Vocoder`; and the thread count a request runs on."""

from __future__ import annotations

import os

import pytest
import torch

from model.sampling import ddpm, windowed_eps
from model.schedules import Schedule
from model.score_net import ScoreNet, ScoreNetParams
from model import score_net_cpu
from model.score_net_cpu import CpuScoreNet
from model.runtime import cpu_threads, resolve_threads
from model.score_net_cpu import intra_op_threads
from model.vocoder import Vocoder
from test_score_net_fast import inputs, plain_eps, random_net, shipped


def assert_same_eps(net: ScoreNet, fast: CpuScoreNet, batch: int, frames: int, seed: int = 1) -> None:
    x, mel, t = inputs(batch, frames, seed)
    with torch.inference_mode():
        expected = net(x, mel, t)
        assert expected.abs().max() > 1e-2
        torch.testing.assert_close(fast(x, mel, t), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(fast(x, mel, t, fast.conditioners(mel)), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("batch", "frames", "tile"), [(1, 1, 4096), (1, 13, 64), (3, 5, 300), (2, 37, 1000),
                                                       (1, 9, 256 * 9)])
def test_random_weights_give_the_modules_eps(batch, frames, tile):
    """One tile or many, a last tile shorter than the rest, and tiles whose edges fall inside a dilation's reach."""
    net = random_net()
    assert_same_eps(net, CpuScoreNet(net, tile=tile), batch, frames)


@pytest.mark.parametrize(("batch", "frames", "threads"), [(1, 40, 2), (1, 40, 3), (3, 12, 2), (1, 1, 2)])
def test_the_pool_gives_the_same_eps(batch, frames, threads):
    """Items cut into parts widened by the reach, on pool threads: the module's eps, whatever the split; a clip
    shorter than twice the reach stays whole. torch's thread count is put back after each call."""
    net = random_net()
    fast = CpuScoreNet(net, tile=700, threads=threads)
    length = frames * 256
    assert len(fast.parts(length, batch)) == (1 if batch >= threads or length < 2 * fast.reach
                                               else min(threads, length // fast.reach))
    before = torch.get_num_threads()
    assert_same_eps(net, fast, batch, frames)
    assert torch.get_num_threads() == before


def test_without_onednn_the_torch_gemms_give_the_same_eps(monkeypatch):
    """A torch built without oneDNN: the same sums as `torch.addmm`."""
    monkeypatch.setattr(score_net_cpu, "ONEDNN", False)
    net = random_net()
    assert_same_eps(net, CpuScoreNet(net, tile=300), 2, 13)


def test_a_net_with_every_bias_random_gives_the_plain_maths():
    """The biases the fast path folds (step projection, residual and skip, conv and conditioner) all nonzero."""
    torch.manual_seed(3)
    net = ScoreNet(ScoreNetParams(8, 5, 3)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.4)
    x, mel, t = inputs(2, 6, seed=4)
    with torch.inference_mode():
        torch.testing.assert_close(CpuScoreNet(net, tile=200)(x, mel, t), plain_eps(net, x, mel, t), atol=1e-5,
                                   rtol=0)


@pytest.mark.parametrize("name", ["small", "base"])
def test_shipped_weights_give_the_modules_eps(name):
    """`base` reaches 512 samples per tap: 7 frames is shorter than its receptive field, 30 spans several tiles."""
    net = shipped(name).eval()
    for frames, tile in ((7, 4096), (30, 1024)):
        assert_same_eps(net, CpuScoreNet(net, tile=tile), 1, frames, seed=2)


def test_windowed_synthesis_gives_the_modules_audio():
    """Windows with their margins, the conditioning cache on and off: the module's audio."""
    net = random_net()
    _, mel, _ = inputs(2, 40, seed=3)
    schedule = Schedule.from_betas([1e-3, 0.05, 0.3])
    expected = ddpm(windowed_eps(net, window_frames=12, cache_bytes=0), mel, schedule, seed=[1, 2])
    fast = CpuScoreNet(net, tile=512)
    for cache_bytes in (0, 10**9):
        torch.testing.assert_close(ddpm(windowed_eps(fast, window_frames=12, cache_bytes=cache_bytes), mel, schedule,
                                        seed=[1, 2]), expected, atol=1e-5, rtol=0)


def test_the_vocoder_runs_the_fast_path_on_a_cpu(tiny_weights):
    voc, oracle = Vocoder.load(tiny_weights, "cpu", "fp32"), Vocoder.load(tiny_weights, "cpu", "fp32", cpu_fast=False)
    assert isinstance(voc.step_net, CpuScoreNet) and oracle.step_net is oracle.score_net
    mel = inputs(1, 30, seed=5)[1][0]
    schedule = voc.schedule(voc.default_rho)
    torch.testing.assert_close(torch.from_numpy(voc.vocode(mel, schedule, seed=3)),
                               torch.from_numpy(oracle.vocode(mel, schedule, seed=3)), atol=1e-5, rtol=0)


def write_cgroup(root, group: str, limits: dict[str, str]):
    """A fake cgroup v2 tree: `limits` maps a cgroup path to its cpu.max; returns the /proc/self/cgroup file."""
    for path, limit in limits.items():
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/") / "cpu.max").write_text(limit + "\n")
    proc = root / "proc-self-cgroup"
    proc.write_text(f"4:memory:/elsewhere\n0::{group}\n")  # a hybrid host lists v1 controllers too
    return proc


def test_threads_follow_the_affinity_and_the_cgroup_quota(tmp_path):
    allowed = len(os.sched_getaffinity(0))
    cases = [("/a/b", {"/a/b": "max 100000"}, allowed),
             ("/a/b", {"/a/b": "max 100000", "/a": "150000 100000"}, 1),  # a parent's quota, rounded down
             ("/", {"/": "50000 100000"}, 1),  # under one CPU: still one thread
             ("/c", {"/c": f"{100000 * (allowed + 4)} 100000"}, allowed)]  # a quota above the mask
    for i, (group, limits, expected) in enumerate(cases):
        root = tmp_path / str(i)
        assert cpu_threads(root, write_cgroup(root, group, limits)) == expected, (group, limits)
    assert cpu_threads(tmp_path, tmp_path / "missing") == allowed  # no cgroup v2: the affinity mask alone

def test_a_request_runs_on_its_threads_and_restores_torchs():
    before = torch.get_num_threads()
    with intra_op_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    assert resolve_threads(3) == 3
    assert resolve_threads(None) == min(before, cpu_threads())
    with pytest.raises(Exception, match="at least 1"):
        resolve_threads(0)



def test_a_vocoders_requests_run_on_its_thread_count(tiny_weights):
    """VOCODER_THREADS reaches each request: the net runs on that many intra-op threads, and torch's count is
    restored after."""
    before, seen = torch.get_num_threads(), []
    voc = Vocoder.load(tiny_weights, "cpu", "fp32", threads=before + 1)
    hook = voc.score_net.step_embedding.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        voc.vocode(inputs(1, 8)[1][0], voc.schedule(voc.default_rho), seed=0)
    finally:
        hook.remove()
    assert seen and set(seen) == {before + 1} and torch.get_num_threads() == before
    assert voc.step_net.threads == before + 1  # and the fast path's pool is that size


def test_a_vocoder_on_the_pool_gives_the_audio_of_one_thread(tiny_weights):
    one, two = (Vocoder.load(tiny_weights, "cpu", "fp32", threads=n) for n in (1, 2))
    mel, schedule = inputs(1, 30, seed=6)[1][0], one.schedule(one.default_rho)
    torch.testing.assert_close(torch.from_numpy(two.vocode(mel, schedule, seed=4, refine=2)),
                               torch.from_numpy(one.vocode(mel, schedule, seed=4, refine=2)), atol=1e-5, rtol=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_runs_on_a_pool_of_its_own():
    """The parent's pool threads do not survive a fork; the child's first call starts its own pool, not a hang."""
    fast = CpuScoreNet(random_net(), threads=2)
    x, mel, t = inputs(1, 20)
    expected = fast(x, mel, t)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it computed the same eps
        os._exit(0 if torch.allclose(fast(x, mel, t), expected, atol=1e-6) else 3)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
