"""The benchmarks run end to end on tiny weights (smallest sizes), so their code cannot rot."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from bench import precision, quality, refine, speed, speed_cpu, speed_synthesis, train
from bench import contracts as contracts_bench
from bench import prior as prior_bench
from bench import projection as projection_bench
from bench.common import fmt, table
from model.score_net import CONFIGS, ScoreNet
from model.vocoder import Vocoder


def finite(values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def check_outputs(out: Path, name: str) -> dict:
    for suffix in ("md", "json", "png"):
        assert (out / f"{name}.{suffix}").stat().st_size > 0
    md = (out / f"{name}.md").read_text()
    assert "- Hardware:" in md and "- Command: `python -m bench." in md and "git revision" in md
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / f"{name}.json").read_text())


def test_quality_quick_two_nets_side_by_side(tiny_weights: Path, shared_data: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(tiny_weights, tmp_path / "other"))
    argv = ["--quick", "--weights", str(tiny_weights), "--weights", str(other), "--data", str(shared_data),
            "--clips", "2", "--seconds", "1.5", "--threads", "1", "--no-dnsmos", "--out", str(tmp_path)]
    assert quality.main(argv) == 0
    data = check_outputs(tmp_path, "quality")
    names = [r["name"] for r in data["results"]]
    assert any(n.startswith("BDDM ours") for n in names) and any(n.startswith("DDIM linear") for n in names)
    baselines = [r for r in data["results"] if r["net"] == "none (no net)"]
    assert [r["name"] for r in baselines] == ["librosa mel_to_audio, 32 GLA", "projection alone, 32"]  # once, first
    assert data["results"][:2] == baselines and all(r["steps"] == 0 for r in baselines)
    nets = [r for r in data["results"] if r not in baselines]
    assert [r["net"] for r in nets].count("other") == len(nets) // 2
    assert any(r["family"] == "BDDM ours + refine (DDPM)" for r in nets)  # each preset with its refinements
    assert [r["clips"][0]["id"] for r in data["results"]] == ["LJ003-0049"] * len(names)  # after the tuning clips
    for r in data["results"]:
        assert len(r["clips"]) == 2 and finite([r["rtf"]]) and r["rtf"] > 0
        assert finite([r["summary"][k][0] for k in ("ls_mse", "mcd", "stoi", "pesq", "pesq_nb", "periodicity",
                                                     "vuv_f1")])
    for r in nets:
        assert r["steps"] >= 1
    same = {r["net"]: r["summary"]["stoi"] for r in nets if r["key"] == nets[0]["key"]}
    assert same["weights"] == same["other"], "the same net, clips and seeds give the same numbers"
    md = (tmp_path / "quality.md").read_text()
    assert "| Method | Net | Sampler | Steps |" in md and "PESQ-NB" in md and "| Method | weights | other |" in md
    assert "V/UV F1" in md and "DNSMOS OVRL" in md
    assert len(data["header"]["weights"]) == 2
    for health in data["conditioning"].values():
        assert set(health["gain"]) == {"20", "60", "100"}
        assert all(len(v) == 2 and finite(v) for v in health["gain"].values())
        assert set(health["silence_gap"]) == {"fast", "balanced", "quality"}
        assert all(finite(g["db"]) for g in health["silence_gap"].values())
    assert "## Conditioning health" in md


def test_quality_served_paths_on_degraded_mels(tiny_weights: Path, shared_data: Path, tmp_path: Path) -> None:
    argv = ["--quick", "--methods", "refine", "--conditions", "smoothed", "+3 dB", "--weights", str(tiny_weights),
            "--data", str(shared_data), "--clips", "1", "--seconds", "1", "--threads", "1", "--no-dnsmos",
            "--out", str(tmp_path)]
    assert quality.main(argv) == 0
    data = check_outputs(tmp_path, "quality")
    conditions = {r["condition"] for r in data["results"]}
    assert conditions == {"clean", "smoothed", "+3 dB"}
    assert not any(n["name"].startswith("DDIM") for n in data["results"])  # only the served paths and baselines
    degraded = [r["name"] for r in data["results"] if r["condition"] == "smoothed"]
    assert len(degraded) == 3 and any("refinements" in n for n in degraded)
    assert "## Mels like an acoustic model's" in (tmp_path / "quality.md").read_text()


def test_refine_quick(tiny_weights: Path, shared_data: Path, tmp_path: Path) -> None:
    argv = ["--quick", "--weights", str(tiny_weights), "--data", str(shared_data), "--threads", "1",
            "--out", str(tmp_path)]
    assert refine.main(argv) == 0
    md = (tmp_path / "refine.md").read_text()
    data = json.loads((tmp_path / "refine.json").read_text())
    kinds = {r["kind"] for r in data["rows"]}
    assert kinds == {"baseline", "(a)", "(b)", "(c)", "(d)"}
    assert [r["clips"][0]["id"] for r in data["rows"]] == ["LJ003-0041"] * len(data["rows"])  # the tuning clips
    assert all(r["rtf"] > 0 and r["wall_rtf"] > 0 for r in data["rows"])
    assert data["unit_costs"]["step"] > data["unit_costs"]["projection"] > 0
    assert "## At matched time" in md and "tuning clips" in md


def test_speed_quick(tiny_weights: Path, shared_data: Path, tmp_path: Path) -> None:
    argv = ["--quick", "--weights", str(tiny_weights), "--data", str(shared_data), "--lengths", "1", "--clients", "1",
            "2", "--mel-seconds", "1", "1.5", "--rho", "fast", "--threads", "1", "--out", str(tmp_path)]
    assert speed.main(argv) == 0
    data = check_outputs(tmp_path, "speed")
    (net,) = data["network"]
    assert finite([net["ours_s"], net["reference_s"], net["ratio"]]) and net["max_abs_diff"] < 1e-4
    assert data["synthesis"] and all(finite([r["rtf"]]) and r["rtf"] > 0 for r in data["synthesis"])
    cache = data["conditioning_cache"]
    assert cache and all(r["same_audio"] and finite([r["speedup"]]) for r in cache)
    paths = data["cpu_paths"]
    assert [r["path"] for r in paths] == list(speed_cpu.CPU_PATHS)
    assert all(finite([r["rtf"], r["gflops"], r["efficiency"]]) and r["efficiency"] > 0 for r in paths)
    rows = data["load"]["rows"]
    assert [(r["batching"], r["clients"]) for r in rows] == [("on", 1), ("on", 2), ("off", 1), ("off", 2)]
    for r in rows:
        assert r["ok"] == r["requests"] >= r["clients"] and r["errors"] == 0
        assert finite([r["throughput"], r["p50_s"], r["p99_s"]]) and r["throughput"] > 0
    (sched,) = data["schedule_latency"]["rows"]
    assert not sched["first_cached"] and sched["hits_cached"] and finite([sched["miss_s"], sched["hit_s"]])
    (streamed,) = [r for r in data["load"]["stream"] if r["preset"] == "fast"]  # (g), at 2 s in quick mode
    assert streamed["max_lsb"] <= 1 and 0 < streamed["first_audio_s"] <= streamed["stream_total_s"]
    assert "## Streaming" in (tmp_path / "speed.md").read_text()
    batched = data["batched"]  # (f): eager only on the CPU unless --compile on
    assert [(r["compiled"], r["batch"]) for r in batched] == [(False, 1), (False, 2)]
    assert all(finite([r["audio_s_per_s"], r["tflops"]]) and r["audio_s_per_s"] > 0 for r in batched)


def test_speed_served_times_each_presets_refinements_apart(tiny_weights: Path, shared_data: Path,
                                                           tmp_path: Path) -> None:
    argv = ["--served", "--skip-server", "--weights", str(tiny_weights), "--data", str(shared_data), "--lengths", "1",
            "--threads", "1", "--out", str(tmp_path)]
    assert speed.main(argv) == 0
    data = json.loads((tmp_path / "speed-served.json").read_text())
    presets = Vocoder.load(tiny_weights, "cpu").presets
    assert sorted(r["refine"] for r in data["synthesis"]) == sorted(p.refine for p in presets.values())
    assert all(0 < r["refine_s"] < r["wall_s"] and 0 < r["refine_share"] < 1 for r in data["synthesis"])
    assert "Skipped (--skip-server)." in (tmp_path / "speed-served.md").read_text()


def test_precision_vocodes_then_rescores(tiny_weights: Path, shared_data: Path, tmp_path: Path) -> None:
    """bf16 guard: vocode both precisions (the CPU fast path's bf16 here), save the audio, and score it again from the file."""
    common = ["--weights", str(tiny_weights), "--data", str(shared_data), "--threads", "1"]
    saved = tmp_path / "audio.npz"
    status = precision.main([*common, "--device", "cpu", "--clips", "1", "--seconds", "3", "--out", str(tmp_path / "a"),
                             "--audio-out", str(saved)])
    name = f"precision-cpu-{tiny_weights.name}"  # a CPU run's report is named after the net, beside the GPU's
    first = json.loads((tmp_path / "a" / f"{name}.json").read_text())
    assert status == (0 if first["guard_holds"] else 1) and first["speedup"] > 0
    assert set(first["abs_diff"]) == set(precision.STAGES) == {"net", "served"}  # before and after refinement
    assert precision.main([*common, "--rescore", str(saved), "--out", str(tmp_path / "b")]) == status
    again = json.loads((tmp_path / "b" / f"{name}.json").read_text())
    assert again["means"] == first["means"] and again["header"]["command"] == first["header"]["command"]
    assert "Scored on" in (tmp_path / "b" / f"{name}.md").read_text()


def test_prior_comparison_runs_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    """Two tiny runs, one per prior, a few steps each: their histories and the same fixed schedules side by side."""
    from model.train.__main__ import main as train_main  # noqa: PLC0415

    (tmp_path / "train.txt").write_text("LJ001-0001\n")
    for prior in ("standard", "energy"):
        train_main(["score", "--config", "tiny", "--prior", prior, "--out", str(tmp_path / prior), "--data",
                    str(shared_data / "wavs"), "--list", str(tmp_path / "train.txt"), "--steps", "2", "--batch", "1",
                    "--segment-frames", "8", "--probe-every", "1", "--probe-seconds", "0.5", "--device", "cpu"])
    assert prior_bench.main(["--run", f"standard={tmp_path / 'standard'}", "--run", f"energy={tmp_path / 'energy'}",
                             "--data", str(shared_data), "--clips", "2", "--seconds", "1", "--skip-full",
                             "--threads", "1", "--note", "a note", "--out", str(tmp_path / "out")]) == 0
    data = check_outputs(tmp_path / "out", "prior")
    assert {r["net"] for r in data["results"]} == {"standard", "energy"}
    assert len(data["results"]) == 6 and all(finite([r["summary"]["stoi"][0]]) for r in data["results"])
    md = (tmp_path / "out" / "prior.md").read_text()
    assert "quiet frames are" in md and "energy prior" in md and "a note" in md and "## Training history" in md


def test_train_quick(tmp_path: Path) -> None:
    """Today's step and the fast one at the same batch, the fast one at another beside it, on the CPU."""
    assert train.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "train.md").read_text()
    assert "- Hardware:" in md and "- Command: `python -m bench.train" in md
    data = json.loads((tmp_path / "train.json").read_text())
    assert [(r["step"], r["batch"]) for r in data["rows"]] == [("today", 2), ("fast", 2), ("fast", 4)]
    for r in data["rows"]:
        assert finite([r["steps_per_s"], r["samples_per_s"], r["tflops"], r["peak_memory_gb"]]) and r["tflops"] > 0
        assert r["samples_per_s"] == pytest.approx(r["steps_per_s"] * r["batch"] * 16 * 256)
    assert set(data["top_kernels"]) == {"today", "fast"} and all(data["top_kernels"].values())
    assert "Top operators of one fast step" in md


def test_table_and_numbers() -> None:
    assert table(["a", "b"], [["x", 1.23456], [2, float("nan")]]).splitlines() == [
        "| a | b |", "|---|---|", "| x | 1.235 |", "| 2 | n/a |"]
    assert [fmt(v) for v in (209.679, 0.5, 1e-6, 123456.0)] == ["209.7", "0.500", "1e-06", "1.23e+05"]


@pytest.mark.parametrize("argv", [["--clips", "0"], ["--seconds", "-1"]])
def test_quality_rejects_bad_sizes(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        quality.parse_args(argv)
    assert e.value.code == 2


def test_run_flops_counts_the_step_as_it_runs() -> None:
    """Cached, the conditioner projections run once per window; uncached, at every step; margins count."""
    net = ScoreNet(CONFIGS["small"])
    c, layers, samples, steps = 32, 12, 100 * 256, 7
    per_step = layers * 8 * c * c + c * c + 2 * c
    projection = layers * 80 * 2 * c
    assert speed_synthesis.run_flops(net, 100, steps) == 2 * samples * (steps * per_step + projection)
    assert speed_synthesis.run_flops(net, 100, steps, cache_bytes=0) == 2 * samples * steps * (per_step + projection)
    windowed = speed_synthesis.run_flops(net, 2000, 1, cache_bytes=0)
    assert windowed > speed_synthesis.run_flops(net, 2000, 1, cache_bytes=0, window_frames=2000)  # the margins' samples


def test_projection_quick(tiny_weights: Path, shared_data: Path, tmp_path: Path) -> None:
    """bench.projection end to end on the tiny net: the kernel's parts timed one by one (their calls follow the
    kernel's signatures), the server alone and under load, and the quality rows."""
    argv = ["--quick", "--weights", str(tiny_weights), "--data", str(shared_data), "--out", str(tmp_path)]
    assert projection_bench.main(argv) == 0
    data = json.loads((tmp_path / "projection.json").read_text())
    assert all(p["seconds"] > 0 for p in data["projection_parts"]) and data["start_parts"]["whole start"] > 0
    assert {q["method"] for q in data["quality"]} >= {"projection balanced (64)", "bddm balanced (7 steps + 48)"}
    assert "## The coherent start" in (tmp_path / "projection.md").read_text()


def test_contracts_quick(tiny_weights: Path, shared_data: Path, tmp_path: Path) -> None:
    """bench.contracts scores what the server serves (the plan's method) in each profile asked for, and `--methods`
    adds the others side by side."""
    argv = ["--quick", "--weights", str(tiny_weights), "--data", str(shared_data), "--no-dnsmos", "--no-predicted",
            "--methods", "projection", "bddm", "--out", str(tmp_path)]
    assert contracts_bench.main(argv) == 0
    rows = json.loads((tmp_path / "contracts.json").read_text())["profiles"]
    assert {(r["profile"], r["method"]) for r in rows} == {(p, m) for p in ("hifigan", "rayhane")
                                                           for m in ("projection", "bddm")}
    assert all(0 < r["stoi"] <= 1 for r in rows)
