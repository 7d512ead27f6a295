"""Grid-search (alpha_hat_N, beta_hat_N) on held-out clips, then store a schedule per rho and the presets."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import MelSpec
from ..refine import PRESET_PROJECTIONS, PRESET_REFINE
from ..checkpoint import SCHEDULE_NET, SCORE_NET, git_revision, load_module, read_config, write_config
from ..scheduling import (PRESET_STEPS, best_pair, canonical_rho, choose_presets, cut_schedules, grid_scores,
                          load_schedule_net, noise_schedule, rho_for_steps, save_reference_mel, shorten)
from ..schedules import Diffusion, Schedule
from ..score_net import ScoreNet, ScoreNetParams
from ..vocoder import Preset
from .common import CorpusOptions, hardware, runtime
from .data import AudioCorpus

#: The rho sweep stored with the weights (plus whatever the presets need).
SWEEP = tuple(canonical_rho(r) for r in np.geomspace(1e-3, 0.5, 20))


@dataclass
class Search(CorpusOptions):
    weights: str
    clips: int = 3
    grid: int = 9
    seconds: float = 1.0
    rho: float = 0.01
    #: "presets": score each pair on the preset step counts' schedules; "rho": on `rho`'s schedule (BDDM's search)
    objective: str = "presets"


def run_search(job: Search) -> Path:
    out = Path(job.weights)
    config = read_config(out)
    if not (out / SCHEDULE_NET).exists() or not config.get("schedule_net"):
        raise SystemExit(f"{out} has no schedule network; run `python -m model.train schedule` first")
    rho = canonical_rho(job.rho)
    rt = runtime(job.device)
    diffusion, spec = Diffusion(**config["diffusion"]), MelSpec(**config["audio"])
    score_net = load_module(out / SCORE_NET, ScoreNet(ScoreNetParams(**config["score_net"]))).to(rt.device).eval()
    schedule_net = load_schedule_net(out, config).to(rt.device).eval()
    audio, mels, names = AudioCorpus(job.data, job.id_list, spec).fixed_clips(job.clips, job.seconds)
    clips = list(zip(audio, mels))
    reference = mels[0]
    t0 = time.time()
    if job.objective not in ("presets", "rho"):
        raise SystemExit(f"--objective must be presets or rho, not {job.objective!r}")
    steps = sorted(PRESET_STEPS.values()) if job.objective == "presets" else ()
    rows = grid_scores(score_net, schedule_net, clips, diffusion, rho, job.grid, job.seed, steps)
    alpha_N, beta_N, score = best_pair(rows, steps)
    seconds = reference.shape[-1] * spec.hop / spec.sample_rate
    scored = f"schedules of {'/'.join(map(str, steps))} steps" if steps else f"rho {rho:g}"
    print(f"grid search ({job.grid}x{job.grid}, {len(clips)} clips of {seconds:.2f} s, {scored}): "
          f"alpha_hat_N {alpha_N:.4f}, beta_hat_N {beta_N:.4f}, LS-MSE {score:.4f} "
          f"({time.time() - t0:.0f} s)")

    # One run that stops only where BDDM does (rho = beta_1); every larger rho stops earlier on the same
    # seeded trajectory, so its schedule is a prefix of this one.
    beta_1 = canonical_rho(diffusion.betas[0])
    longest = noise_schedule(score_net, schedule_net, reference, alpha_N, beta_N, beta_1, diffusion, seed=0)
    rhos = {beta_1, *SWEEP, *(r for n in PRESET_STEPS.values() if (r := rho_for_steps(longest, n)) is not None)}
    schedules = {r: shorten(longest, r, diffusion) for r in rhos}
    presets, own = choose_presets(schedules), {}
    if steps:  # each preset: the pair best at its own step count, its schedule stored at the rho that cuts
        # the main trajectory to that count, so rho -> steps stays what the sweep says
        for i, n in enumerate(steps):
            name = next(k for k, v in PRESET_STEPS.items() if v == n)
            r = rho_for_steps(longest, n) if n < longest.steps else beta_1
            if r is None:
                continue
            a, b, s = best_pair(rows, steps, only=i)
            cut = cut_schedules(score_net, schedule_net, reference, a, b, [n], diffusion)[0]
            schedules[r] = Schedule.from_alphas(cut.alpha, diffusion, f"bddm-{name}", **{
                **cut.meta, "rho": r, "alpha_hat_N": a, "beta_hat_N": b})
            presets[name], own[name] = r, {"alpha_hat_N": a, "beta_hat_N": b, "ls_mse": s, "steps": cut.steps}
        print("presets, each with its own pair:\n" + "\n".join(
            f"  {k:<9} rho {presets[k]:<8g} alpha_hat_N {v['alpha_hat_N']:.4f}, beta_hat_N {v['beta_hat_N']:.4f}: "
            f"{v['steps']} steps, LS-MSE {v['ls_mse']:.4f}" for k, v in own.items()))
    print("rho -> steps:\n" + "\n".join(f"  {r:<8g} {schedules[r].steps:>3}" + "".join(
        f"  ({name})" for name, v in presets.items() if v == r) for r in sorted(schedules)))

    save_reference_mel(out, reference)
    config["search"] = {"alpha_hat_N": alpha_N, "beta_hat_N": beta_N, "ls_mse": score, "rho": rho,
                        "objective": job.objective, "preset_pairs": own,
                        "presets": {name: Preset(r, PRESET_REFINE[name], PRESET_PROJECTIONS[name]).to_config()
                                    for name, r in presets.items()},
                        "default_rho": presets["balanced"],
                        "schedules": {str(r): s.to_dict() for r, s in sorted(schedules.items())}}
    config.setdefault("training", {})["search"] = {
        "clips": len(clips), "clip_ids": names, "seconds": round(seconds, 3),
        "grid": job.grid, "rho": rho, "objective": job.objective, "wall_seconds": round(time.time() - t0, 1),
        "hardware": hardware(rt),
        "data": str(job.data), "list": str(job.id_list) if job.id_list else None, "git_revision": git_revision()}
    write_config(out, config)
    print(f"search done in {time.time() - t0:.0f} s -> {out}")
    return out
