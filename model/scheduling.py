"""BDDM noise scheduling: the schedule network turns (alpha_hat_N, beta_hat_N) and a threshold rho into a schedule.

Starting from x_N ~ N(0, I) at level alpha_hat_N with scale beta_hat_N, the loop alternates one DDPM reverse
step with eps_theta and one prediction of the next scale by sigma_phi (both in the whitened coordinates of the
score net's prior, `model.prior`, where x_N ~ N(0, I) holds whatever the prior),
    alpha_{n-1} = alpha_n / sqrt(1 - beta_n),   beta_{n-1} = r(x_{n-1}) * min(beta_n, 1 - alpha_{n-1}^2).
The predicted scales never increase. rho is the quality/speed knob: the loop stops once the next step would
change the noise level (alpha^2) by a fraction beta < rho, and the last level then goes to clean audio in one
step. It also stops where BDDM does: beta below the training grid's beta_1, or alpha reaching the grid's
cleanest level. The noise is seeded, so the trajectory is the same for every rho and a smaller rho only
stops later: never fewer steps.

The pair (alpha_hat_N, beta_hat_N) comes from a grid search that scores each candidate by the log-mel MSE
(LS-MSE) between audio sampled with its schedule and the real audio of held-out clips: the schedule for one
rho (BDDM's search), or the schedules of the presets' step counts cut from its trajectory. A cut ends noisier
than a schedule searched for its own length (the last level jumps to clean audio), so each preset also gets
the pair that is best for its own step count (`best_pair(..., only=i)`), as BDDM searches per schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .audio import mel_spectrogram
from .checkpoint import SCHEDULE_NET, CheckpointError, load_module, load_tensors, save_tensors
from .sampling import Noise, ddpm, step, windowed_eps
from .schedule_net import ScheduleNet, ScheduleNetParams
from .schedules import Diffusion, Schedule
from .score_net import ScoreNet

REFERENCE = "reference.safetensors"
MAX_STEPS = 50
#: Preset name -> the most steps it may take; "quality" is the step count it aims at.
PRESET_STEPS = {"fast": 3, "balanced": 7, "quality": 12}


def canonical_rho(rho: float) -> float:
    """rho rounded to 3 significant digits: the key of a stored schedule. Raises ValueError outside (0, 1)."""
    rho = float(rho)
    if not 0.0 < rho < 1.0:  # also rejects NaN
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    return float(f"{rho:.3g}")


@torch.inference_mode()
def noise_schedule(score_net: ScoreNet, schedule_net: ScheduleNet, mel: torch.Tensor, alpha_N: float, beta_N: float,
                   rho: float, diffusion: Diffusion = Diffusion(), seed: int = 0,
                   max_steps: int = MAX_STEPS) -> Schedule:
    """The BDDM schedule for threshold rho, scheduled on one mel (n_mels, F) (module docstring)."""
    if not (0.0 < alpha_N < 1.0 and 0.0 < beta_N < 1.0):
        raise ValueError(f"alpha_hat_N and beta_hat_N must be in (0, 1), got {alpha_N}, {beta_N}")
    device = next(score_net.parameters()).device
    mel = mel.to(device).float()[None]
    # the whitened coordinates of the net's prior (`model.prior`): there the process is the standard one
    eps_fn, hop = score_net.prior.whitened(windowed_eps(score_net)), score_net.params.hop
    noise = Noise(seed, 1)
    x = noise.draw(mel.shape[-1] * hop, device)
    beta_min, alpha_max = float(diffusion.betas[0]), float(diffusion.alphas[0])
    levels, alpha, beta = [alpha_N], alpha_N, beta_N
    while len(levels) < max_steps and beta >= max(rho, beta_min):
        alpha_next = alpha / math.sqrt(1 - beta)
        if alpha_next >= alpha_max:
            break
        t = torch.full((1,), float(diffusion.timestep_of(alpha)), device=device)
        eps = eps_fn(x, mel, t).float()
        sigma = math.sqrt((1 - alpha_next**2) / (1 - alpha**2) * beta)
        x = step(x, eps, alpha**2, beta, sigma, noise.draw(x.shape[-1], device))
        alpha = alpha_next
        levels.append(alpha)
        delta_sq = torch.tensor([1 - alpha**2], device=device)
        beta = float(schedule_net.beta(x, torch.tensor([beta], device=device), delta_sq))
    return Schedule.from_alphas(levels[::-1], diffusion, f"bddm-rho{rho:g}", rho=rho)


def _visited_betas(longest: Schedule) -> np.ndarray:
    """The scales the loop predicted, beta_hat_N first: a schedule's betas from n = N down, without the
    closing step to clean audio (beta_1)."""
    return longest.beta[::-1][:-1]


def shorten(longest: Schedule, rho: float, diffusion: Diffusion = Diffusion()) -> Schedule:
    """What `noise_schedule` gives for rho, read off a schedule made with the same inputs and a smaller rho.

    The seeded trajectory does not depend on rho, so the loop for rho stops at the first level whose
    predicted scale is below rho: the schedule is a prefix of the longer one's levels.
    """
    below = np.flatnonzero(_visited_betas(longest) < rho)
    steps = int(below[0]) + 1 if below.size else longest.steps
    levels = longest.alpha[::-1][:steps]
    return Schedule.from_alphas(levels[::-1], diffusion, f"bddm-rho{rho:g}", **{**longest.meta, "rho": rho})


def rho_for_steps(longest: Schedule, steps: int) -> float | None:
    """A rho that stops the trajectory of `longest` (scheduled with a smaller rho) after exactly `steps` levels:
    one between the predicted scales of the last kept level and the one before it (None if none exists)."""
    visited = _visited_betas(longest)
    if not 1 <= steps < longest.steps:
        return None
    upper, lower = (1.0 if steps == 1 else float(visited[steps - 2])), float(visited[steps - 1])
    return canonical_rho(math.sqrt(lower * upper)) if lower < upper else None


def ls_mse(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Log-mel MSE between generated and real audio: the grid search's objective."""
    return float(torch.mean((mel_spectrogram(generated.cpu()) - mel_spectrogram(real.cpu())) ** 2))


def grid_candidates(diffusion: Diffusion, grid: int) -> list[tuple[float, float]]:
    """(alpha_hat_N, beta_hat_N) pairs of the official search: alpha inside (alpha_T, alpha_1), beta inside (0, 1),
    `grid` evenly spaced interior values each, keeping only pairs whose first step stays below alpha = 1."""
    alpha_T, alpha_1 = float(diffusion.alphas[-1]), float(diffusion.alphas[0])
    fractions = np.arange(1, grid + 1) / (grid + 1)
    return [(float(alpha_T + (alpha_1 - alpha_T) * fa), float(fb))
            for fb in fractions for fa in fractions if alpha_T + (alpha_1 - alpha_T) * fa < math.sqrt(1 - fb)]


def cut_schedules(score_net: ScoreNet, schedule_net: ScheduleNet, mel: torch.Tensor, alpha_N: float, beta_N: float,
                  steps: Sequence[int], diffusion: Diffusion = Diffusion(), seed: int = 0) -> list[Schedule]:
    """The schedules of `steps` steps (or the whole trajectory, where it is shorter) that rho thresholds cut
    from one seeded trajectory, run only as far as the longest of them needs."""
    longest = noise_schedule(score_net, schedule_net, mel, alpha_N, beta_N, canonical_rho(diffusion.betas[0]),
                             diffusion, seed, max_steps=max(steps) + 1)
    cuts = [rho_for_steps(longest, n) for n in steps]
    return [longest if r is None else shorten(longest, r, diffusion) for r in cuts]


def grid_scores(score_net: ScoreNet, schedule_net: ScheduleNet, clips: Sequence[tuple[torch.Tensor, torch.Tensor]],
                diffusion: Diffusion, rho: float, grid: int = 9, seed: int = 0,
                steps: Sequence[int] = ()) -> list[dict]:
    """Every grid candidate scored: its schedule for rho, or with `steps` its schedules of those step counts
    (`cut_schedules`), made on the first clip's mel; all clips (equal lengths) sampled with each schedule.
    Rows: {"alpha_N", "beta_N", "steps": [steps each schedule got], "ls_mse": [their mean LS-MSE over clips]}."""
    device = next(score_net.parameters()).device
    audio = torch.stack([a for a, _ in clips])
    mels = torch.stack([m for _, m in clips]).to(device)
    eps_fn, hop = windowed_eps(score_net), score_net.params.hop
    seeds = [seed + i for i in range(len(clips))]
    rows = []
    for alpha_N, beta_N in grid_candidates(diffusion, grid):
        schedules = (cut_schedules(score_net, schedule_net, mels[0], alpha_N, beta_N, steps, diffusion, seed) if steps
                     else [noise_schedule(score_net, schedule_net, mels[0], alpha_N, beta_N, rho, diffusion, seed)])
        rows.append({"alpha_N": alpha_N, "beta_N": beta_N, "steps": [s.steps for s in schedules],
                     "ls_mse": [ls_mse(ddpm(eps_fn, mels, s, seeds, hop, score_net.prior), audio) for s in schedules]})
    if not rows:
        raise ValueError(f"no valid (alpha_hat_N, beta_hat_N) candidate in a {grid}x{grid} grid")
    return rows


def best_pair(rows: Sequence[dict], steps: Sequence[int] = (), only: int | None = None) -> tuple[float, float, float]:
    """(alpha_hat_N, beta_hat_N, score) of the best `grid_scores` row: the fewest steps missing from `steps`
    (a trajectory that ends early would leave a longer preset no more steps than a shorter one), then the
    lowest geometric-mean LS-MSE; `only` scores the schedule at that index alone."""
    picks = range(len(rows[0]["ls_mse"])) if only is None else [only]

    def key(row: dict) -> tuple[int, float]:
        missing = sum(max(0, steps[i] - row["steps"][i]) for i in picks) if steps else 0
        return missing, math.exp(np.mean([math.log(row["ls_mse"][i]) for i in picks]))

    best = min(rows, key=key)
    return best["alpha_N"], best["beta_N"], key(best)[1]


def grid_search(score_net: ScoreNet, schedule_net: ScheduleNet, clips: Sequence[tuple[torch.Tensor, torch.Tensor]],
                diffusion: Diffusion, rho: float, grid: int = 9, seed: int = 0,
                steps: Sequence[int] = ()) -> tuple[float, float, float]:
    """Best (alpha_hat_N, beta_hat_N, LS-MSE) over the grid (`grid_scores`, `best_pair`)."""
    return best_pair(grid_scores(score_net, schedule_net, clips, diffusion, rho, grid, seed, steps), steps)


def choose_presets(schedules: Mapping[float, Schedule]) -> dict[str, float]:
    """fast / balanced: the most steps within 3 / 7; quality: the step count closest to 12 (rho keys).

    Equal step counts come from the same trajectory prefix, so ties go to the largest rho. When no rho
    is short enough for a preset, it takes the fewest steps available.
    """
    if not schedules:
        raise ValueError("no schedules to choose presets from")
    by_steps: dict[int, float] = {}
    for rho, s in schedules.items():
        by_steps[s.steps] = max(rho, by_steps.get(s.steps, rho))
    counts = sorted(by_steps)

    def within(limit: int) -> int:
        return max([n for n in counts if n <= limit], default=counts[0])

    fast, balanced = within(PRESET_STEPS["fast"]), within(PRESET_STEPS["balanced"])
    quality = min((n for n in counts if n >= balanced), key=lambda n: (abs(n - PRESET_STEPS["quality"]), n))
    return {"fast": by_steps[fast], "balanced": by_steps[balanced], "quality": by_steps[quality]}


def load_schedule_net(directory: str | Path, config: dict) -> ScheduleNet:
    try:
        net = ScheduleNet(ScheduleNetParams(**config["schedule_net"]))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{directory}/config.json: bad schedule_net section ({e})") from None
    return load_module(Path(directory) / SCHEDULE_NET, net)


def save_reference_mel(directory: str | Path, mel: torch.Tensor) -> None:
    save_tensors(Path(directory) / REFERENCE, {"mel": mel.float()})


def load_reference_mel(directory: str | Path) -> torch.Tensor | None:
    """The held-out mel (n_mels, F) that `search` scheduled on, so new rhos extend the same trajectory."""
    path = Path(directory) / REFERENCE
    if not path.exists():
        return None
    mel = load_tensors(path).get("mel")
    if mel is None or mel.dim() != 2 or mel.shape[-1] < 1:
        raise CheckpointError(f"{path} has no (n_mels, frames) tensor 'mel'")
    return mel.float()
