#!/usr/bin/env bash
# One prepared, time-budgeted training run for a lent GPU (DEVELOPERS.md: about 15 device minutes in all,
# the 1-2 minute start included; 64 MiB goes with the call, 8 files of 16 MiB come back). It continues a
# weights directory (step counts only grow): first `bench.train` measures the training step against the
# reference DiffWave's at BATCH x SEGMENT frames and at twice the batch (about 2 minutes with the compiles;
# --quick off CUDA), then score net -> schedule net -> search in one --minutes budget, with the conditioning
# health logged beside the loss, and it returns the weights without the train state. On CUDA it then runs
# the bf16 guard (`bench.precision`, its audio saved for PESQ here: the image has no `pesq`) and
# `bench.speed --device cuda` on the fresh weights. SPEED=0 skips the benches.
#
#   bash scripts/gpu-train.sh prepare          here, once: data-carry/ (the FLAC) and .whl/ (soundfile, httpx,
#                                              lmnt's diffwave for bench.train's baseline), git-ignored
#   bash scripts/gpu-train.sh run [MINUTES]    on the device: run(command="bash scripts/gpu-train.sh run 3",
#                                              carry=["data-carry", ".whl"], timeout_s=590)
#   bash scripts/gpu-train.sh more [MINUTES]   a next call on the still-warm machine: resumes the run's own
#                                              train state (Adam included), trains only, no benches
#   bash scripts/gpu-train.sh batch-test [MINUTES]   two score-net runs from FROM, MINUTES each: BATCH at LR, and
#                                              twice BATCH at LR x sqrt 2; their probe logs (every 500 steps) say
#                                              which learns more per minute (batch-B.log and batch-B.tar, the
#                                              weights: 4 files back); both keep FROM's own prior
#   bash scripts/gpu-train.sh prior-test [MINUTES]   two score-net runs under the energy prior, MINUTES each: FROM
#                                              continued under it, and a new CONFIG net (prior-continued.log,
#                                              prior-new.log, each with its .tar of weights): which is the better
#                                              start for the energy prior
#   CONFIG=tiny FROM= DEVICE=cpu BATCH=2 SEGMENT=16 DATA=../shared/data/ljspeech bash scripts/gpu-train.sh run 2
#                                              the CPU rehearsal (DATA: the corpus, default data-carry/ljspeech)
#
# LR (default 5e-4) is the learning rate. PRIOR (standard|energy, model.prior; default energy, the winner of
# bench/results/prior.md) is the prior of a new net, and for FROM's net under another prior the one its weights
# continue under (recorded in training.prior_switches); PRIOR= keeps FROM's own prior.
#
# FROM: the weights to continue (default weights/base, the quality net: every GPU minute grows it; empty: a
# new CONFIG net). The results land in $OUT (the device's return folder; runs/gpu-out here): weights.tar
# (the weights directory less its train state), train.log and bench.tar (the benches' reports, train-gpu.md
# among them, bench.train's log and precision-audio.npz): 3 files, as at most 8 come back. Untar weights.tar
# over weights/base, untar bench.tar, `python -m bench.precision --rescore precision-audio.npz` (PESQ), then
# measure with `python -m bench.quality` here.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data-carry/ljspeech}
FROM=${FROM-weights/base}
CONFIG=${CONFIG:-base}
DEVICE=${DEVICE:-auto}
BATCH=${BATCH:-32}
SEGMENT=${SEGMENT:-64}
WORK=runs/gpu
RESULTS=${OUT:-runs/gpu-out}
LR=${LR:-5e-4}
PRIOR=${PRIOR-energy}

setup() {  # the carried wheels where the GPU image lacks them; the results folder
  if ! python3 -c "import soundfile, httpx, diffwave" 2>/dev/null; then
    python3 -m pip install --quiet --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  mkdir -p "$RESULTS"
}

probe_run() {  # NAME BATCH LR FROM MINUTES: the score net alone from FROM (empty: a new CONFIG net), the probe
  # every 500 steps; its log back as NAME.log and its weights (no train state) as NAME.tar, so no minute is lost
  local dir=runs/gpu-$1
  rm -rf "$dir" && mkdir -p "$dir"
  if [ -n "$4" ]; then
    cp "$4/config.json" "$4/score_net.safetensors" "$dir"/
  fi
  python3 -m model.train score --data "$DATA/wavs" --list "$DATA/train.txt" --probe-list "$DATA/valid.txt" \
    --out "$dir" --config "$CONFIG" --steps 1000000000 --minutes "$5" --batch "$2" --lr "$3" \
    --segment-frames "$SEGMENT" ${PRIOR:+--prior "$PRIOR"} --device "$DEVICE" --probe-every 500 \
    --save-every 100000 2>&1 | quiet | tee "$RESULTS/$1.log"
  tar -C "$dir" -cf "$RESULTS/$1.tar" config.json score_net.safetensors
}

quiet() {  # a trainer's log without its progress bars
  tr '\r' '\n' | grep -av 'it/s[],]\|s/it[],]'
}

case "${1:-}" in
prepare)
  mkdir -p data-carry && cp -r ../shared/data/ljspeech data-carry/
  # soundfile for the trainer, httpx for bench.common, diffwave (source only: built here, pure Python) for the
  # reference step bench.train and bench.speed time
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl soundfile cffi pycparser \
    httpx httpcore h11 anyio sniffio certifi idna pystoi
  python3 -m pip wheel --quiet --no-deps -w .whl diffwave==0.1.7
  du -sh data-carry .whl
  ;;
run | more)
  minutes=${2:-8}
  setup
  bench=$WORK/bench
  cuda=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
  if [ "$1" = run ]; then  # a fresh $WORK from FROM: weights and EMA go on, Adam starts afresh (no train state travels)
    rm -rf "$WORK" && mkdir -p "$WORK"
    if [ -n "$FROM" ]; then
      find "$FROM" -maxdepth 1 -type f \( -name '*.json' -o -name '*.safetensors' \) ! -name 'train_state*' \
        -exec cp {} "$WORK"/ \;
    fi
    if [ "${SPEED:-1}" = 1 ]; then  # the step today and the faster one, at BATCH and beside it at twice BATCH
      mkdir -p "$bench"
      timeout 150 python3 -m bench.train --config "$CONFIG" --batch "$BATCH" --segment-frames "$SEGMENT" \
        --batches $((2 * BATCH)) --device "$DEVICE" --out "$bench" $([ "$cuda" = 1 ] || echo --quick) 2>&1 \
        | tee "$bench/bench-train.log" || echo "bench.train did not finish"
    fi
  fi  # more: $WORK as the last call left it on this still-warm machine, its train state included
  python3 -m model.train all --data "$DATA/wavs" --list "$DATA/train.txt" --valid-list "$DATA/valid.txt" \
    --out "$WORK" --config "$CONFIG" --minutes "$minutes" --batch "$BATCH" --segment-frames "$SEGMENT" \
    --lr "$LR" ${PRIOR:+--prior "$PRIOR"} --device "$DEVICE" --clips 8 --seconds 2 \
    --probe-every "${PROBE_EVERY:-1000}" --save-every 1000 2>&1 | quiet | tee "$RESULTS/train.log"
  find "$WORK" -maxdepth 1 -type f ! -name 'train_state*' -printf '%f\n' | tar -C "$WORK" -cf "$RESULTS/weights.tar" -T -
  tar -tvf "$RESULTS/weights.tar"
  if [ "$1" = run ] && [ "${SPEED:-1}" = 1 ] && [ "$cuda" = 1 ]; then
    timeout 60 python3 -m bench.precision --device cuda --weights "$WORK" --data "$DATA" --out "$bench" \
      --audio-out "$bench/precision-audio.npz" || echo "bench.precision did not finish"
    timeout 110 python3 -m bench.speed --device cuda --skip-server --weights "$WORK" --data "$DATA" \
      --lengths 1 10 60 --reps 3 --out "$bench" || echo "bench.speed did not finish"
  fi
  if [ "$1" = run ] && [ -d "$bench" ]; then
    tar -C "$bench" -cf "$RESULTS/bench.tar" . && tar -tvf "$RESULTS/bench.tar"  # one file: at most 8 come back
  fi
  ;;
batch-test)  # does twice the batch, at sqrt 2 the learning rate, learn more per minute from the same weights?
  setup
  PRIOR= probe_run batch-$BATCH "$BATCH" "$LR" "$FROM" "${2:-4}"
  PRIOR= probe_run batch-$((2 * BATCH)) $((2 * BATCH)) "$(python3 -c "print($LR * 2 ** 0.5)")" "$FROM" "${2:-4}"
  ;;
prior-test)  # under the energy prior: FROM's weights continued, against a new net of the same size
  setup
  PRIOR=energy probe_run prior-continued "$BATCH" "$LR" "$FROM" "${2:-4}"
  PRIOR=energy probe_run prior-new "$BATCH" "$LR" "" "${2:-4}"
  ;;
*)
  sed -n 2,35p "$0"
  exit 2
  ;;
esac
