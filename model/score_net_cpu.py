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

import torch
import torch.nn.functional as F

from .score_net import ScoreNet

#: Samples per time tile: a `base` layer's tile (3C + 2C + C floats a sample) is ~1.5 MB, inside a core's L2.
TILE = 4096
#: oneDNN's linear with its fused add, where this torch was built with it (x86 and ARM wheels are).
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class CpuScoreNet:
    """`ScoreNet.forward` and `.conditioners` with the weights repacked for (S, C) GEMMs; for inference.

    It copies the weights when built, so a net changed later needs a new one. Weights are (out, in), as
    `linear` takes them.
    """

    def __init__(self, net: ScoreNet, tile: int = TILE, dtype: torch.dtype = torch.float32) -> None:
        self.net, self.params, self.prior, self.dtype = net, net.params, net.prior, dtype
        self.receptive_field = net.receptive_field
        c = net.params.residual_channels
        layers = net.layers
        self.dilations = [layer.dilated_conv.dilation[0] for layer in layers]
        self.pad = max(self.dilations)
        self.tile = max(tile, self.pad)  # the delayed residual update needs d <= tile
        with torch.no_grad():
            # The filter half (output channels C..2C) doubled: tanh(f) = 2 sigmoid(2 f) - 1.
            scale = torch.cat([torch.ones(c), torch.full((c,), 2.0)])
            taps = [layer.dilated_conv.weight * scale[:, None, None] for layer in layers]  # (2C, C, 3)
            # (2C, 3C): columns are the taps at t - d, t, t + d, each over the C input channels.
            self.w_dilated = [w.permute(0, 2, 1).reshape(2 * c, 3 * c).to(dtype).contiguous() for w in taps]
            self.w_taps = [w.sum(-1) for w in taps]
            self.w_first = [w[:, :, 0].clone() for w in taps]
            self.w_last = [w[:, :, 2].clone() for w in taps]
            self.w_cond = [(layer.cond_proj.weight[:, :, 0] * scale[:, None]).to(dtype).contiguous()
                           for layer in layers]
            self.b_cond = [((layer.cond_proj.bias + layer.dilated_conv.bias) * scale).to(dtype) for layer in layers]
            self.w_step = torch.cat([layer.step_proj.weight for layer in layers])  # (L C, 512)
            self.b_step = torch.cat([layer.step_proj.bias for layer in layers])
            # The gate computes -z: the projection's weights negated.
            self.w_res = [(-layer.out_proj.weight[:c, :, 0]).to(dtype).contiguous() for layer in layers]
            self.w_skip = [(-layer.out_proj.weight[c:, :, 0]).to(dtype).contiguous() for layer in layers]
            self.b_res = [layer.out_proj.bias[:c].clone() for layer in layers]
            b_skip = sum(layer.out_proj.bias[c:] for layer in layers)
            root = math.sqrt(len(layers))
            self.w_out1 = (net.skip_proj.weight[:, :, 0].t() / root).contiguous()  # skip / sqrt(L) folded in
            self.b_out1 = net.skip_proj.bias + net.skip_proj.weight[:, :, 0] @ b_skip / root
            self.w_out2 = net.output_proj.weight[0, :, 0].clone()
            self.b_out2 = net.output_proj.bias.clone()
            self.w_in, self.b_in = net.input_proj.weight[:, 0, 0].clone(), net.input_proj.bias.clone()

    @torch.inference_mode()
    def conditioners(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, L, S, 2C): every layer's conditioner projection with its conv's bias, once per request (as
        `ScoreNet.conditioners`), each layer's contiguous so that a tile reads one block."""
        cond = self.net.condition(mel).transpose(1, 2).to(self.dtype).contiguous()
        out = cond.new_empty(cond.shape[0], len(self.w_cond), cond.shape[1], 2 * self.params.residual_channels)
        for b in range(cond.shape[0]):
            for i, (w, bias) in enumerate(zip(self.w_cond, self.b_cond)):
                out[b, i] = linear(cond[b], w, bias)
        return out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor,
                 conditioners: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, S), mel (B, n_mels, S / hop), t (B,) -> eps (B, S), as `ScoreNet.forward`. Without
        `conditioners` each tile projects the upsampled mel itself (no S x L x 2C buffer)."""
        steps = F.linear(self.net.step_embedding(t), self.w_step, self.b_step)
        steps = steps.view(x.shape[0], -1, self.params.residual_channels)
        cond = (self.net.condition(mel).transpose(1, 2).to(self.dtype).contiguous() if conditioners is None
                else conditioners)
        return torch.stack([self._item(x[b], cond[b], steps[b], conditioners is not None)
                            for b in range(x.shape[0])])

    def _item(self, x: torch.Tensor, cond: torch.Tensor, steps: torch.Tensor, cached: bool) -> torch.Tensor:
        """One batch item: x (S,), cond (L, S, 2C) cached or the upsampled mel (S, n_mels), steps (L, C)."""
        length, c, pad = x.shape[0], self.params.residual_channels, self.pad
        tile = min(self.tile, length)
        h = x.new_zeros(length + 2 * pad, c)  # h~, zero-padded as the conv pads; row pad + t is sample t
        torch.clamp_min(torch.addr(self.b_in, x, self.w_in), 0, out=h[pad:pad + length])
        shadow = h.to(self.dtype)  # what the convs read: h itself in fp32, a bf16 copy kept beside it in bf16
        skip = x.new_zeros(length, c)
        carried = x.new_zeros(c)  # the residual's constant part c
        stacked = x.new_empty(tile, 3 * c, dtype=self.dtype)
        z: list[torch.Tensor] = []  # -z of this layer's tiles, each kept until its residual update
        r2 = 1 / math.sqrt(2.0)
        tiles = [(lo, min(lo + tile, length)) for lo in range(0, length, tile)]
        for i, d in enumerate(self.dilations):
            const = carried + steps[i]  # what the conv adds to h~ inside the signal
            inside = (self.w_taps[i] @ const).to(self.dtype)
            for k, (lo, hi) in enumerate(tiles):
                st = stacked[:hi - lo]
                torch.cat([shadow[pad + lo - d:pad + hi - d], shadow[pad + lo:pad + hi],
                           shadow[pad + lo + d:pad + hi + d]], 1, out=st)
                conditioner = cond[i, lo:hi] if cached else linear(cond[lo:hi], self.w_cond[i], self.b_cond[i])
                y = linear(st, self.w_dilated[i], inside, conditioner)
                if lo < d:  # the tap at t - d reads the zero padding
                    y[:min(d, hi) - lo] -= self.w_first[i] @ const
                if hi > length - d:  # the tap at t + d reads it
                    y[max(length - d, lo) - lo:] -= self.w_last[i] @ const
                y.sigmoid_()
                z.append(torch.addcmul(y[:, :c], y[:, :c], y[:, c:], value=-2.0))  # -z
                accumulate(skip[lo:hi], z[-1], self.w_skip[i])
                if k:  # this tile's conv has read the previous tile's last rows: update it now
                    self._residual(h, shadow, z.pop(0), tiles[k - 1], i, r2)
            self._residual(h, shadow, z.pop(0), tiles[-1], i, r2)
            carried = (carried + self.b_res[i]) * r2
        out = torch.relu(torch.addmm(self.b_out1, skip, self.w_out1))
        return torch.mv(out, self.w_out2) + self.b_out2

    def _residual(self, h: torch.Tensor, shadow: torch.Tensor, z: torch.Tensor, tile: tuple[int, int], layer: int,
                  r2: float) -> None:
        """(h + r) / sqrt 2 on one tile's rows, and the bf16 copy the convs read."""
        rows = slice(self.pad + tile[0], self.pad + tile[1])
        accumulate(h[rows], z, self.w_res[layer], r2)
        if shadow is not h:
            shadow[rows] = h[rows]


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
