#!/usr/bin/env bash
# One prepared, time-budgeted training run for a lent GPU (DEVELOPERS.md: about 15 device minutes in all,
# the 1-2 minute start included; 64 MiB goes with the call, 8 files of 16 MiB come back). It continues a
# weights directory (step counts only grow): score net -> schedule net -> search in one --minutes budget,
# with the conditioning health logged beside the loss, and returns the weights without the train state.
# On CUDA it then runs the bf16 guard (`bench.precision`, its audio saved for PESQ here: the image has no
# `pesq`) and `bench.speed --device cuda` on the fresh weights (SPEED=0 skips both).
#
#   bash scripts/gpu-train.sh prepare          here, once: data-carry/ (the FLAC) and .whl/ (soundfile), git-ignored
#   bash scripts/gpu-train.sh run [MINUTES]    on the device: run(command="bash scripts/gpu-train.sh run 6",
#                                              carry=["data-carry", ".whl"], timeout_s=590)
#   bash scripts/gpu-train.sh more [MINUTES]   a next call on the still-warm machine: resumes the run's own
#                                              train state (Adam included), trains only, no benches
#   CONFIG=tiny FROM= DEVICE=cpu BATCH=2 SEGMENT=16 bash scripts/gpu-train.sh run 1     the CPU rehearsal
#
# FROM: the weights to continue (default weights/base, the quality net: every GPU minute grows it; empty: a
# new CONFIG net). The results land in $OUT (the device's return folder; runs/gpu-out here): weights.tar
# (the weights directory less its train state), train.log and bench.tar (the benches' reports and
# precision-audio.npz): 3 files, as at most 8 come back. Untar weights.tar over weights/base, untar
# bench.tar, `python -m bench.precision --rescore precision-audio.npz` (PESQ), then measure with
# `python -m bench.quality` here.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=data-carry/ljspeech
FROM=${FROM-weights/base}
CONFIG=${CONFIG:-base}
DEVICE=${DEVICE:-auto}
BATCH=${BATCH:-32}
SEGMENT=${SEGMENT:-64}
WORK=runs/gpu
RESULTS=${OUT:-runs/gpu-out}

case "${1:-}" in
prepare)
  mkdir -p data-carry && cp -r ../shared/data/ljspeech data-carry/
  # soundfile for the trainer, httpx for bench.common (lmnt's diffwave is source-only: no reference timing there)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl soundfile cffi pycparser \
    httpx httpcore h11 anyio sniffio certifi idna pystoi
  du -sh data-carry .whl
  ;;
run | more)
  minutes=${2:-8}
  if ! python3 -c "import soundfile, httpx" 2>/dev/null; then  # the GPU image has neither: the carried wheels
    python3 -m pip install --quiet --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  mkdir -p "$RESULTS"
  if [ "$1" = run ]; then  # a fresh $WORK from FROM: weights and EMA go on, Adam starts afresh (no train state travels)
    rm -rf "$WORK" && mkdir -p "$WORK"
    if [ -n "$FROM" ]; then
      find "$FROM" -maxdepth 1 -type f \( -name '*.json' -o -name '*.safetensors' \) ! -name 'train_state*' \
        -exec cp {} "$WORK"/ \;
    fi
  fi  # more: $WORK as the last call left it on this still-warm machine, its train state included
  python3 -m model.train all --data "$DATA/wavs" --list "$DATA/train.txt" --valid-list "$DATA/valid.txt" \
    --out "$WORK" --config "$CONFIG" --minutes "$minutes" --batch "$BATCH" --segment-frames "$SEGMENT" \
    --device "$DEVICE" --clips 8 --seconds 2 --probe-every "${PROBE_EVERY:-1000}" --save-every 1000 2>&1 \
    | tr '\r' '\n' | grep -av 'it/s[],]\|s/it[],]' | tee "$RESULTS/train.log"
  find "$WORK" -maxdepth 1 -type f ! -name 'train_state*' -printf '%f\n' | tar -C "$WORK" -cf "$RESULTS/weights.tar" -T -
  tar -tvf "$RESULTS/weights.tar"
  if [ "$1" = run ] && [ "${SPEED:-1}" = 1 ] && python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    bench=$WORK/bench && mkdir -p "$bench"
    timeout 60 python3 -m bench.precision --device cuda --weights "$WORK" --data "$DATA" --out "$bench" \
      --audio-out "$bench/precision-audio.npz" || echo "bench.precision did not finish"
    timeout 110 python3 -m bench.speed --device cuda --skip-server --weights "$WORK" --data "$DATA" \
      --lengths 1 10 60 --reps 3 --out "$bench" || echo "bench.speed did not finish"
    tar -C "$bench" -cf "$RESULTS/bench.tar" .  # one file: at most 8 come back
  fi
  ;;
*)
  sed -n 2,20p "$0"
  exit 2
  ;;
esac
