"""Speed benchmark: the score network, whole synthesis, the reference DiffWave, and the server under load.

(a) Score-network forward time per step and whole-synthesis real-time factor (RTF = wall seconds /
    audio seconds) against audio length, at each rho preset, on the CPU and on CUDA when present.
(b) The same architecture in the reference implementation (lmnt-com `diffwave`), loaded with *our*
    weights so both compute the same function, timed on the same input.
(c) `python -m server` as a subprocess under a closed-loop load of real validation mels: throughput,
    latency percentiles and 429s against concurrency, with micro-batching on and off.
(d) Time to the first schedule for a new rho (a schedule-cache miss) and the cost of a hit.
(e) The per-request conditioning cache: whole synthesis at the balanced preset with each layer's
    conditioning recomputed at every step (as before the cache) and computed once, in the same run.
(f) Batched throughput at the balanced preset, eager and torch.compile'd (VOCODER_COMPILE), with the
    compile time, the achieved TFLOP/s, and on CUDA the profile's top kernels of one compiled synthesis.
(g) Streaming: for real speech of several lengths at each preset, the whole request (`/v1/vocode`) against
    `/v1/vocode/stream` on the same server: the time to the first audio (the WAV header and the first 16 KiB of
    PCM at the client), the time to the last byte, and the largest difference of the two answers in 16-bit steps.
(h) The CPU paths side by side, per net and length at batch 1, in one run: balanced synthesis through `Vocoder` with
    today's eager module, the fast path (`model.score_net_cpu`) in fp32 and in bf16, and lmnt's `DiffWave` of the
    same shape and step count in a plain DDPM loop; each path's GFLOP/s from the FLOPs of the step as it runs
    (the windows with their margins, conditioner projections only where the cache is off) against the best
    GEMM rate measured in the same run. `--cpu-paths` runs this part alone into `speed-cpu-<net>.md`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from model.checkpoint import read_config
from model.vocoder import Vocoder

from .common import DEFAULT_REFERENCE, base_parser, log_axes, nets_of, parse_with_quick, write_outputs
from .speed_cpu import cpu_path_rows, cpu_path_section, cpu_paths_main
from .speed_gpu import batch_rows, batch_section
from .speed_served import load_section, schedule_section, served_main, server_part
from .speed_stream import stream_section
from .speed_synthesis import (bench_schedules, cache_rows, cache_section, devices, net_label, network_rows,
                              network_section, speech, synthesis_rows, synthesis_section)


def parse_args(argv: list[str] | None):
    ap = base_parser("python -m bench.speed", __doc__, several=True)
    ap.add_argument("--reference-schedules", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--lengths", type=float, nargs="+", default=[1, 5, 10, 30], help="audio seconds")
    ap.add_argument("--reps", type=int, default=3, help="timed forward passes per length (median)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=16, help="requests per load row, at least per-client x clients")
    ap.add_argument("--per-client", type=int, default=2, help="requests per client per load row, at least")
    ap.add_argument("--load-seconds", type=float, default=60.0, help="stop sending new requests after this")
    ap.add_argument("--mel-seconds", type=float, nargs=2, default=[2.0, 10.0], help="request length range")
    ap.add_argument("--rho", default="balanced", help="rho or preset the load requests ask for")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--stream-lengths", type=float, nargs="*", default=[5, 20, 60],
                    help="(g) audio seconds streamed at each preset (none: skip)")
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                    help="where (a) and (b) run; cuda writes speed-gpu.md, the others speed.md")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="(f): auto times eager and compiled on CUDA, eager only on the CPU")
    ap.add_argument("--batches", type=int, nargs="+", help="(f) batch sizes (default 1 4 16 64 on CUDA, 1 4 on CPU)")
    ap.add_argument("--batch-seconds", type=float, default=10.0, help="(f) clip length")
    ap.add_argument("--served", action="store_true",
                    help="only what a client meets, into speed-served.md: each preset's whole synthesis with its "
                         "refinements' share, then the server under load, the schedule cache and streaming")
    ap.add_argument("--cpu-paths", action="store_true",
                    help="(h) alone, into speed-cpu-<net>.md (its lengths: --lengths), with every preset's RTF on "
                         "the fast path in fp32 and bf16 at --preset-seconds")
    ap.add_argument("--preset-seconds", type=float, default=5.0, help="(h) with --cpu-paths: the presets' length")
    args = parse_with_quick(ap, argv, {"lengths": [1, 5], "reps": 1, "clients": [1, 4], "requests": 2,
                                       "per_client": 1, "load_seconds": 20.0, "mel_seconds": [2.0, 3.0],
                                       "batches": [1, 2], "batch_seconds": 1.0, "stream_lengths": [2.0]})
    if min(args.lengths) <= 0 or min(args.reps, min(args.clients), args.requests, args.per_client) < 1:
        ap.error("--lengths, --reps, --clients, --requests and --per-client must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nets, head = nets_of("bench.speed", args)
    if args.cpu_paths:
        return cpu_paths_main(args, nets, head)
    if args.served:
        return served_main(args, nets[0], head)
    net_rows, synth_rows, cached_rows, batched, notes = [], [], [], ([], []), []
    audio = speech(args.data, max(*args.lengths, args.batch_seconds), read_config(nets[0])["audio"]["sample_rate"])
    cpu_rows = []
    for dev in devices(args.device):
        for weights in nets:  # the same inputs for every net
            cpu_rows += cpu_path_rows(weights, audio, args.lengths, args.reps) if dev == "cpu" else []
            voc = Vocoder.load(weights, device=dev, dtype=args.dtype)
            schedules, more = bench_schedules(voc, args.reference_schedules)
            notes += [f"{net_label(voc)}: {n}" for n in more] if dev == "cpu" else []
            net_rows += network_rows(voc, audio, args.lengths, args.reps)
            synth_rows += synthesis_rows(voc, audio, schedules, args.lengths)
            cached_rows += cache_rows(voc, audio, schedules, args.lengths, args.reps)
            rows, kernels = batch_rows(args, weights, audio, dev)
            batched = (batched[0] + rows, kernels or batched[1])
            print(f"network and synthesis of {net_label(voc)} timed on {dev}", file=sys.stderr)
    if net_rows[0]["reference_s"] is None:
        notes.append("reference DiffWave not timed: install it with `pip install --no-deps diffwave`")
    load, sched, server_note = server_part(args, nets[0])  # the server sections on the first net
    name = "speed-gpu" if args.device == "cuda" else "speed"
    write_outputs(args.out, name, f"Speed benchmark{' (GPU)' if args.device == 'cuda' else ''}", head,
                  report(net_rows, synth_rows, cached_rows, batched, load, sched, server_note, notes, args, cpu_rows),
                  {"network": net_rows, "synthesis": synth_rows, "conditioning_cache": cached_rows,
                   "cpu_paths": cpu_rows,
                   "batched": batched[0], "top_kernels": batched[1], "load": load,
                   "schedule_latency": sched,
                   "notes": notes}, plot, net_rows, synth_rows, load)
    print(f"wrote {args.out}/{name}.md, {name}.json, {name}.png", file=sys.stderr)
    return 0


def report(net_rows, synth_rows, cached_rows, batched, load, sched, server_note: str | None, notes: list[str],
           args, cpu_rows: list[dict]) -> str:
    parts = network_section(net_rows) + [""] + synthesis_section(synth_rows) + [""] + cache_section(cached_rows) + [""]
    parts += batch_section(*batched) + cpu_path_section(cpu_rows)
    if server_note:
        parts += ["## Server under load", "", server_note]
    else:
        parts += load_section(load, args) + [""] + schedule_section(sched) + [""] + stream_section(load)
    if notes:
        parts += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(parts)


def plot(net_rows, synth_rows, load):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    ax = axes[0]
    for net, dev in dict.fromkeys((r["net"], r["device"]) for r in net_rows):
        rows = [r for r in net_rows if (r["net"], r["device"]) == (net, dev)]
        for key, label, style in (("ours_plain_s", "ours", "o-"), ("reference_s", "reference DiffWave", "s--")):
            if rows[0][key] is not None:
                ax.plot([r["seconds"] for r in rows], [1e3 * r[key] for r in rows], style,
                        label=f"{label}, {net} ({dev})")
    log_axes(ax, sorted({r["seconds"] for r in net_rows}))
    ax.set(xlabel="audio seconds", ylabel="ms per forward (one step)", title="Score network forward")
    ax.legend(fontsize=8)
    ax = axes[1]
    for key in dict.fromkeys((r["net"], r["device"], r["schedule"]) for r in synth_rows):
        rows = [r for r in synth_rows if (r["net"], r["device"], r["schedule"]) == key]
        ax.plot([r["seconds"] for r in rows], [r["rtf"] for r in rows], "o-", label=f"{key[0]}: {key[2]}, "
                f"{rows[0]['steps']} steps ({key[1]})")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    log_axes(ax, sorted({r["seconds"] for r in synth_rows}))
    ax.set(xlabel="audio seconds", ylabel="RTF (wall / audio)", title="Whole synthesis")
    ax.legend(fontsize=8)
    ax = axes[2]
    if load:
        for mode, color in (("on", "C0"), ("off", "C1")):
            rows = [r for r in load["rows"] if r["batching"] == mode]
            x = [r["throughput"] for r in rows]
            ax.plot(x, [r["p50_s"] for r in rows], "o-", color=color, label=f"p50, batching {mode}")
            ax.plot(x, [r["p95_s"] for r in rows], "^--", color=color, label=f"p95, batching {mode}")
            for r in rows:
                ax.annotate(str(r["clients"]), (r["throughput"], r["p50_s"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        ax.legend(fontsize=8)
    ax.set(xlabel="throughput (audio s per s)", ylabel="latency s",
           title="Server: latency vs throughput (labels: clients)")
    ax.grid(alpha=0.3)
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
