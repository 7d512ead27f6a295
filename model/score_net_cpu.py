"""The score net's step on a CPU: the same function as `ScoreNet`, computed as a few GEMMs per time tile.

`ScoreNet` runs every layer as whole-length convs and elementwise ops in (B, C, S) layout, each a pass over
tens of MB, so most of its time is memory traffic, not arithmetic. Here one batch item at a time, in (S, C)
layout, each layer runs over tiles of `TILE` samples that stay in the core's cache:
- the dilated conv is one GEMM of the three time-shifted inputs side by side, (n, 3C) x (3C, 2C), added onto
  the tile's conditioner (cached per request, or projected here from the upsampled mel when the cache is off);
- the step embedding is constant in time, so it enters as a bias: W (h + s) = W h + (W0 + W1 + W2) s, less
  W0 s on the first d samples and W2 s on the last d, where the conv's zero padding drops a tap;
- the gate is one sigmoid over the whole tile, tanh(f) = 2 sigmoid(2 f) - 1 with the 2 folded into the filter
  half's weights, and one fused multiply-add, -z = s - 2 s s', whose sign goes into the 1x1 projection;
- the projection is two GEMMs: the residual update in place, (h + r) / sqrt 2, one tile behind (the next
  tile's conv still reads the last d rows of this one), and the skip accumulated in place. Their biases
  are constants too: the residual's carried as a vector through the layers, h = h~ + c, c' = (c + b) / sqrt 2,
  and the skip's summed once into the output layers.
The parallelism is the net's own, not OpenMP's: with `threads` > 1 each batch item is cut in time into parts
widened by the net's reach (the sum of its dilations, so each part's kept samples are exact), and the parts run
on a pool of worker threads whose torch ops are single-threaded. Each op here lasts 50-500 us, shorter than
what OpenMP's fork and join cost once its threads sleep between regions: libgomp lets them spin only while it
manages no more threads than there are CPUs, and a server, whose event loop and inference thread each lead
their own team, manages more. There a 2-thread synthesis ran 2.4x slower than in a single-threaded script, as
slow as with `OMP_WAIT_POLICY=PASSIVE`; on the pool it runs as fast in both.

The GEMMs go through oneDNN's linear (`torch.ops.mkldnn`, as inductor's CPU fusions do), whose adds fold into
the product: on AMD's AVX-512 cores it runs fp32 at twice the rate of MKL's sgemm behind `torch.mm`, which takes
its AVX2 path there (bench/results/speed-cpu-*.md). Where torch was built without oneDNN the same sums are
`torch.addmm`. `ScoreNet` stays the reference: tests pin this to it at fp32 rounding on random and shipped weights.

With `dtype=torch.bfloat16` (CPUs with AVX512_BF16 or AMX) the layers' GEMMs take bf16 operands and give bf16
pre-activations (as CUDA's autocast does), the conditioner cache and the gate are bf16, and the residual and skip
sums and the output layers stay fp32: the convs read a bf16 copy of the residual, refreshed as each tile is
updated. `bench.precision` guards what that does to the audio.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F

from .cancel import Check
from .score_net import ScoreNet

#: Samples per time tile: a `base` layer's tile (3C + 2C + C floats a sample) is ~1.5 MB, inside a core's L2.
TILE = 4096
#: oneDNN's linear with its fused add, where this torch was built with oneDNN (the x86 wheels are).
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class CpuScoreNet:
    """`ScoreNet.forward` and `.conditioners` with the weights repacked for (S, C) GEMMs; for inference.

    It copies the weights when built, so a net changed later needs a new one. Weights are (out, in), as
    `linear` takes them. `threads` > 1 runs the work on that many pool threads (`workers`).
    """

    def __init__(self, net: ScoreNet, tile: int = TILE, dtype: torch.dtype = torch.float32, threads: int = 1) -> None:
        self.net, self.params, self.prior, self.dtype, self.threads = net, net.params, net.prior, dtype, threads
        self.receptive_field = net.receptive_field
        c = net.params.residual_channels
        layers = net.layers
        self.dilations = [layer.dilated_conv.dilation[0] for layer in layers]
        self.pad = max(self.dilations)
        self.reach = sum(self.dilations)  # samples each side that one output reads, through every layer
        self.tile = max(tile, self.pad)  # the delayed residual update needs d <= tile
        with torch.no_grad():
            # The filter half (output channels C..2C) doubled: tanh(f) = 2 sigmoid(2 f) - 1.
            scale = torch.cat([torch.ones(c), torch.full((c,), 2.0)])
            taps = [layer.dilated_conv.weight * scale[:, None, None] for layer in layers]  # (2C, C, 3)
            # (2C, 3C): columns are the taps at t - d, t, t + d, each over the C input channels.
            self.w_dilated = [w.permute(0, 2, 1).reshape(2 * c, 3 * c).to(dtype).contiguous() for w in taps]
            # What the conv adds for the constant part of its input: all three taps inside the signal, less the
            # first (last) tap where it reads the zero padding; (L, 3, 2C, C).
            stacked = torch.stack(taps)
            self.w_constant = torch.stack([stacked.sum(-1), stacked[..., 0], stacked[..., 2]], 1)
            self.w_cond = [(layer.cond_proj.weight[:, :, 0] * scale[:, None]).to(dtype).contiguous()
                           for layer in layers]
            self.b_cond = [((layer.cond_proj.bias + layer.dilated_conv.bias) * scale).to(dtype) for layer in layers]
            self.w_step = torch.cat([layer.step_proj.weight for layer in layers])  # (L C, 512)
            self.b_step = torch.cat([layer.step_proj.bias for layer in layers])
            # The gate computes -z: the projection's weights negated.
            self.w_res = [(-layer.out_proj.weight[:c, :, 0]).to(dtype).contiguous() for layer in layers]
            self.w_skip = [(-layer.out_proj.weight[c:, :, 0]).to(dtype).contiguous() for layer in layers]
            # The residual's constant part entering each layer: c_0 = 0, c' = (c + b) / sqrt 2 (input-independent).
            carried, self.carried = torch.zeros(c), []
            for layer in layers:
                self.carried.append(carried)
                carried = (carried + layer.out_proj.bias[:c]) / math.sqrt(2.0)
            self.carried = torch.stack(self.carried)
            b_skip = sum(layer.out_proj.bias[c:] for layer in layers)
            root = math.sqrt(len(layers))
            self.w_out1 = (net.skip_proj.weight[:, :, 0] / root).contiguous()  # skip / sqrt(L) folded in
            self.b_out1 = net.skip_proj.bias + net.skip_proj.weight[:, :, 0] @ b_skip / root
            self.w_out2 = net.output_proj.weight[:, :, 0].clone()
            self.b_out2 = net.output_proj.bias.clone()
            self.w_in, self.b_in = net.input_proj.weight[:, 0, 0].clone(), net.input_proj.bias.clone()

    @torch.inference_mode()
    def conditioners(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, L, S, 2C): every layer's conditioner projection with its conv's bias, once per request (as
        `ScoreNet.conditioners`), each layer's contiguous so that a tile reads one block; a layer per pool task."""
        cond = self.net.condition(mel).transpose(1, 2).to(self.dtype).contiguous()
        out = cond.new_empty(cond.shape[0], len(self.w_cond), cond.shape[1], 2 * self.params.residual_channels)

        def project(job: tuple[int, int]) -> None:
            b, i = job
            out[b, i] = linear(cond[b], self.w_cond[i], self.b_cond[i])

        self._map(project, [(b, i) for b in range(cond.shape[0]) for i in range(len(self.w_cond))])
        return out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor,
                 conditioners: torch.Tensor | None = None, stop: Check | None = None) -> torch.Tensor:
        """x (B, S), mel (B, n_mels, S / hop), t (B,) -> eps (B, S), as `ScoreNet.forward`. Without
        `conditioners` each tile projects the upsampled mel itself (no S x L x 2C buffer). `stop` (`model.cancel`)
        is called before each layer: a step of `small` on 20 s is over a second of work on two cores, a layer
        a twelfth of it."""
        steps = F.linear(self.net.step_embedding(t), self.w_step, self.b_step)
        const = steps.view(x.shape[0], -1, self.params.residual_channels) + self.carried  # (B, L, C)
        # (B, L, 3, 2C): what the conv adds for it inside the signal, and where its first or last tap reads padding.
        constants = torch.einsum("lkoc,blc->blko", self.w_constant, const)
        cached = conditioners is not None
        cond = conditioners if cached else self.net.condition(mel).transpose(1, 2).to(self.dtype).contiguous()
        length = x.shape[1]

        def part(job: tuple[int, int, int]) -> torch.Tensor:
            """Samples lo..hi of item b, from the part widened by the reach on each side (exact inside it)."""
            b, lo, hi = job
            a, z = max(lo - self.reach, 0), min(hi + self.reach, length)
            item_cond = cond[b, :, a:z] if cached else cond[b, a:z]
            return self._item(x[b, a:z], item_cond, constants[b], cached, stop)[lo - a:hi - a]

        jobs = [(b, *span) for b in range(x.shape[0]) for span in self.parts(length, x.shape[0])]
        out = self._map(part, jobs)
        per_item = len(jobs) // x.shape[0]
        return torch.stack([torch.cat(out[b * per_item:(b + 1) * per_item]) for b in range(x.shape[0])])

    def parts(self, length: int, batch: int) -> list[tuple[int, int]]:
        """How one item's samples are split: enough parts to keep every pool thread busy, none shorter than the
        reach (beyond that the widened parts would repeat more work than they share out)."""
        n = max(1, min(math.ceil(self.threads / batch), length // max(self.reach, 1)))
        return [(length * k // n, length * (k + 1) // n) for k in range(n)]

    def _map(self, fn, jobs: list) -> list:
        """fn over jobs, on the pool when there is one and more than one job, in order. torch's thread count is
        one process-wide number, which torch's own loops read in every thread: it is 1 while the pool works (the
        caller only waits), so that no pool thread starts threads of its own."""
        if self.threads == 1 or len(jobs) == 1:
            return [fn(job) for job in jobs]
        with intra_op_threads(1):
            return list(workers(self.threads).map(in_inference_mode(fn), jobs))

    def _item(self, x: torch.Tensor, cond: torch.Tensor, constants: torch.Tensor, cached: bool,
              stop: Check | None = None) -> torch.Tensor:
        """One batch item: x (S,), cond (L, S, 2C) cached or the upsampled mel (S, n_mels), constants (L, 3, 2C).
        Only elementwise ops and oneDNN's GEMMs, which keep to the calling thread's one thread on the pool (MKL's
        do not: they would start threads of their own)."""
        length, c, pad = x.shape[0], self.params.residual_channels, self.pad
        tile = min(self.tile, length)
        h = x.new_zeros(length + 2 * pad, c)  # h~, zero-padded as the conv pads; row pad + t is sample t
        torch.mul(x[:, None], self.w_in, out=h[pad:pad + length])
        h[pad:pad + length].add_(self.b_in).clamp_min_(0)
        shadow = h.to(self.dtype)  # what the convs read: h itself in fp32, a bf16 copy kept beside it in bf16
        skip = x.new_zeros(length, c)
        stacked = x.new_empty(tile, 3 * c, dtype=self.dtype)
        z: list[torch.Tensor] = []  # -z of this layer's tiles, each kept until its residual update
        tiles = [(lo, min(lo + tile, length)) for lo in range(0, length, tile)]
        for i, d in enumerate(self.dilations):
            if stop is not None:
                stop()
            inside, first, last = constants[i]
            inside = inside.to(self.dtype)
            for k, (lo, hi) in enumerate(tiles):
                st = stacked[:hi - lo]
                torch.cat([shadow[pad + lo - d:pad + hi - d], shadow[pad + lo:pad + hi],
                           shadow[pad + lo + d:pad + hi + d]], 1, out=st)
                conditioner = cond[i, lo:hi] if cached else linear(cond[lo:hi], self.w_cond[i], self.b_cond[i])
                y = linear(st, self.w_dilated[i], inside, conditioner)
                if lo < d:  # the tap at t - d reads the zero padding
                    y[:min(d, hi) - lo] -= first
                if hi > length - d:  # the tap at t + d reads it
                    y[max(length - d, lo) - lo:] -= last
                y.sigmoid_()
                z.append(torch.addcmul(y[:, :c], y[:, :c], y[:, c:], value=-2.0))  # -z
                accumulate(skip[lo:hi], z[-1], self.w_skip[i])
                if k:  # this tile's conv has read the previous tile's last rows: update it now
                    self._residual(h, shadow, z.pop(0), tiles[k - 1], i)
            self._residual(h, shadow, z.pop(0), tiles[-1], i)
        return linear(linear(skip, self.w_out1, self.b_out1).relu_(), self.w_out2, self.b_out2)[:, 0]

    def _residual(self, h: torch.Tensor, shadow: torch.Tensor, z: torch.Tensor, tile: tuple[int, int],
                  layer: int) -> None:
        """(h + r) / sqrt 2 on one tile's rows, and the bf16 copy the convs read."""
        rows = slice(self.pad + tile[0], self.pad + tile[1])
        accumulate(h[rows], z, self.w_res[layer], 1 / math.sqrt(2.0))
        if shadow is not h:
            shadow[rows] = h[rows]


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` for one request (or one pool phase), and restored after it."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)


@lru_cache(maxsize=None)
def workers(n: int) -> ThreadPoolExecutor:
    """n pool threads for the fast path, shared by every `CpuScoreNet` of the process (so n bounds them all). Each
    sets OpenMP's count for itself to 1 (oneDNN reads that one); torch's own count is process-wide, so it is put
    back once all n have set theirs."""
    before = torch.get_num_threads()
    started = threading.Barrier(n + 1)

    def single_threaded() -> None:
        torch.set_num_threads(1)
        started.wait()

    pool = ThreadPoolExecutor(n, thread_name_prefix="score-net", initializer=single_threaded)
    for _ in range(n):
        pool.submit(lambda: None)
    started.wait()
    torch.set_num_threads(before)
    return pool


# A forked child has the pool's queue but none of its threads: it starts a pool of its own.
os.register_at_fork(after_in_child=workers.cache_clear)


def in_inference_mode(fn):
    """fn under `torch.inference_mode` (thread-local: a pool thread does not inherit the caller's)."""
    def run(*args):
        with torch.inference_mode():
            return fn(*args)
    return run


def linear(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
           add: torch.Tensor | None = None) -> torch.Tensor:
    """a w^T (+ bias) (+ add) as a new tensor in a's dtype (bias and add in it too): one oneDNN call."""
    if ONEDNN:
        if add is None:
            return torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(a, add, w, bias, "add")
    out = torch.mm(a, w.t()) if bias is None else torch.addmm(bias, a, w.t())
    return out if add is None else out.add_(add)


def accumulate(acc: torch.Tensor, a: torch.Tensor, w: torch.Tensor, scale: float = 1.0) -> None:
    """acc = scale (acc + a w^T), in place: the product in a's dtype, the sum in acc's (fp32 when a is bf16)."""
    if a.dtype == acc.dtype:
        total = linear(a, w, add=acc)
        if scale != 1:
            torch.mul(total, scale, out=acc)
        else:
            acc.copy_(total)
    else:
        acc.add_(linear(a, w))
        if scale != 1:
            acc.mul_(scale)
