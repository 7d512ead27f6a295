"""Streaming synthesis: a request's audio chunk by chunk, each chunk final as soon as it is computed, and equal to
the same request vocoded whole.

After N reverse steps an output sample depends on x_N and the injected noise within N receptive fields of it
(and on the mel, which is known in full); each mel-consistency refinement after them (`model.refine`) reaches a
few frames further. So a chunk [start, end) of the output is exact once the K refinements run on the chunk widened
by `refine.reach_frames`, over reverse-process audio that is itself exact there: all N steps run on that span
widened by `margin_frames`. What a region's edges get wrong moves inwards by at most one step's (or one
refinement's) reach at a time, and never reaches the chunk. Nothing is crossfaded.

The noise is the whole request's: the same seeded draws `sampling.ddpm` makes (x_N, then one per reverse step),
replayed slice by slice by a `NoiseTape`, so a seeded stream equals `/v1/vocode` to float rounding (the two
compute in windows of different sizes) and two seeded streams are bit-identical.

The first chunk is short (about 1 s), so the first audio comes early; later ones double up to `LARGEST_FRAMES`,
which bounds the margins' overhead (both sides of every chunk are computed twice).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .cancel import Cancelled


#: The first chunk, in mel frames (~1 s at 22050 Hz / hop 256), and the size later chunks double up to (~8 s).
FIRST_FRAMES = 86
LARGEST_FRAMES = 688
#: torch's CPU normal kernel fills blocks of 16 values, so a draw whose length is a multiple of 16 is the start of
#: any longer draw from the same generator state (a shorter tail is drawn another way). Full draws are
#: frames * hop long, a multiple of 16; a tape draws slices as prefixes rounded up to it (tests pin it).
RANDN_BLOCK = 16


class StreamCancelled(Cancelled):
    """The stream was cancelled (its client went away): no further reverse step runs for it."""


@dataclass(frozen=True)
class Chunk:
    start: int  # output frames this chunk makes final: [start, end)
    end: int
    lo: int  # frames computed: [start, end) widened by the margins, within the mel
    hi: int


def margin_frames(receptive_field: int, hop: int, steps: int) -> int:
    """Frames on each side of a chunk within which `steps` reverse steps can reach it: per step the dilated
    stack's receptive field plus two frames of the mel upsampler (as `sampling.windowed_eps` takes for one)."""
    return steps * (2 + math.ceil(receptive_field / hop))


def chunk_plan(frames: int, margin: int, first: int = FIRST_FRAMES, largest: int = LARGEST_FRAMES) -> list[Chunk]:
    """Chunks covering [0, frames): `first` frames, then each twice the one before, at most `largest`."""
    chunks, start, size = [], 0, first
    while start < frames:
        end = min(frames, start + size)
        chunks.append(Chunk(start, end, max(0, start - margin), min(frames, end + margin)))
        start, size = end, min(2 * size, largest)
    return chunks


class NoiseTape:
    """One request's seeded noise draws, as `sampling.Noise` makes them for a batch of one, replayable by slice.

    It keeps the generator state at the start of each draw (a few KB each), not the draws: a slice is drawn
    again as a prefix of its draw. Cancelling it stops the sampler that reads it at its next draw, which comes
    before every reverse step but the first.
    """

    def __init__(self, seed: int | None, length: int, draws: int) -> None:
        self.gen = torch.Generator("cpu")
        self.gen.manual_seed(seed) if seed is not None else self.gen.seed()
        self.length, self.draws, self.states = length, draws, []
        self.cancelled = threading.Event()

    def _start_states(self) -> list[torch.Tensor]:
        """The generator state at the start of each draw, found once (on the inference thread, not at request time)
        by making every draw as the sampler would."""
        if not self.states:
            for _ in range(self.draws):
                self.states.append(self.gen.get_state())
                torch.randn(self.length, generator=self.gen)
        return self.states

    def window(self, lo: int, hi: int) -> "TapeWindow":
        """Samples [lo, hi) of every draw, in order: a `sampling.NoiseSource` for the chunk's region."""
        return TapeWindow(self, lo, hi)

    def slice(self, draw: int, lo: int, hi: int) -> torch.Tensor:
        if self.cancelled.is_set():
            raise StreamCancelled("the stream was cancelled")
        self.gen.set_state(self._start_states()[draw])
        return torch.randn(min(self.length, -(-hi // RANDN_BLOCK) * RANDN_BLOCK), generator=self.gen)[lo:hi]


class TapeWindow:
    def __init__(self, tape: NoiseTape, lo: int, hi: int) -> None:
        self.tape, self.lo, self.hi, self.next = tape, lo, hi, 0

    def draw(self, length: int, device: torch.device | str) -> torch.Tensor:
        if length != self.hi - self.lo:
            raise ValueError(f"a tape window of {self.hi - self.lo} samples asked for {length}")
        noise = self.tape.slice(self.next, self.lo, self.hi)
        self.next += 1
        return noise[None].to(device)


#: vocode(mel (n_mels, F), noise source) -> audio (F * hop,): the reverse process of one request on a region, with
#: a tape window (`Vocoder.vocode`, no refinement).
RegionVocoder = Callable[[torch.Tensor, TapeWindow], np.ndarray]
#: refine(audio (F * hop,), mel (n_mels, F)) -> audio: the request's refinements on a region (`model.refine`).
RegionRefiner = Callable[[np.ndarray, torch.Tensor], np.ndarray]


class Stream:
    """One request's audio as chunks (`chunk_plan`); `render` computes one, `cancel` stops the rest.

    Two stages, each with its own margin. The reverse process (`margin` frames of reach, `draws` noise draws: one
    per step, or one for projection alone) runs once per frame, ahead of the chunks as far as the refinements need
    (`refine_margin` frames past each chunk), and its exact output is kept; the refinements then run on each
    chunk widened by `refine_margin`. So a refinement's reach costs only cheap projections, never reverse steps.
    """

    def __init__(self, vocode: RegionVocoder, refine: RegionRefiner, mel: torch.Tensor, seed: int | None, hop: int,
                 margin: int, refine_margin: int, draws: int, first: int = FIRST_FRAMES,
                 largest: int = LARGEST_FRAMES) -> None:
        self.vocode, self.refine, self.mel, self.hop, self.margin = vocode, refine, mel, hop, margin
        frames = mel.shape[-1]
        self.plan = chunk_plan(frames, refine_margin, first, largest)
        self.tape = NoiseTape(seed, frames * hop, draws)
        self.sampled = np.empty(frames * hop, np.float32)  # the reverse process's final audio of frames [0, done)
        self.done = 0

    def _sample_to(self, end: int) -> None:
        """Run the reverse process on frames [done, end), widened by its margin, and keep their exact audio."""
        if end <= self.done:
            return
        lo, hi, hop = max(0, self.done - self.margin), min(self.mel.shape[-1], end + self.margin), self.hop
        region = self.vocode(self.mel[:, lo:hi], self.tape.window(lo * hop, hi * hop))
        self.sampled[self.done * hop:end * hop] = region[(self.done - lo) * hop:(end - lo) * hop]
        self.done = end

    def render(self, chunk: Chunk) -> np.ndarray:
        """The final audio of output frames [chunk.start, chunk.end), (frames * hop,) float32 in [-1, 1]."""
        self._sample_to(chunk.hi)
        hop = self.hop
        region = self.refine(self.sampled[chunk.lo * hop:chunk.hi * hop], self.mel[:, chunk.lo:chunk.hi])
        return region[(chunk.start - chunk.lo) * hop:(chunk.end - chunk.lo) * hop]

    def cancel(self) -> None:
        self.tape.cancelled.set()


class WholeStream:
    """A stream computed whole at its first chunk and handed out in the chunks of `chunk_plan`: for a contract
    whose frames do not map one to one onto the net's (another rate or hop), exact but with no early audio."""

    def __init__(self, vocode: Callable[[], np.ndarray], frames: int, hop: int, first: int = FIRST_FRAMES,
                 largest: int = LARGEST_FRAMES) -> None:
        self.vocode, self.hop, self.audio = vocode, hop, None
        self.plan = chunk_plan(frames, 0, first, largest)

    def render(self, chunk: Chunk) -> np.ndarray:
        if self.audio is None:
            self.audio = self.vocode()
        return self.audio[chunk.start * self.hop:chunk.end * self.hop]

    def cancel(self) -> None:
        """Nothing to stop between chunks: the whole was computed at the first."""
