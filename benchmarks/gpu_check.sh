#!/usr/bin/env bash
# The GPU check: one run of at most 8 minutes on one CUDA GPU, the install included (not run by CI).
#   bash benchmarks/gpu_check.sh             on the GPU machine; everything it prints also lands in $OUT/gpu_check.log
#   bash benchmarks/gpu_check.sh --dry-run   on any machine, in under a minute: checks the script itself (every
#                                            command, script argument, gpnas command line and config override)
# $OUT (default runs/gpu-check) holds the figures: gpu_check.log, latency.json, search/gpu-check (study, MLflow),
# full-train (checkpoints, report). Each step runs under its own timeout (their sum, with 5 s of grace each, is at
# most 480 s); a failed step prints "step N failed (rc)" and the next one runs; the exit status is 1 if any failed.
#   0. the machine: the GPUs, torch, CUDA
#   1. the install: nothing where $PY (default: .venv/bin/python, made by `make setup`, else python3) imports the
#      project; otherwise the wheels of .whl/ go into /tmp/site and the package onto the path through symlinks in
#      /tmp/gp (a machine that cannot download: carry .whl/, it is git-ignored; ray and mlflow are too large to carry)
#   2. the bundled digits set, built once into the cache ($GPNAS_CACHE, default ~/.cache/gpnas)
#   3. CUDA latency of yolor-v3, yolor-prn, yolor-csp and yolor-elan at 640, batch 1, fp16: median, IQR, CV (goal
#      CV <= 1 %), launched eagerly and as a CUDA graph, 20 repeats of 20 passes (benchmarks/gpu_latency.py)
#   4. predicted vs measured on the GPU's own per-layer table: 16 candidates of the demo space at 640, fp16
#   5. AMP training images/s and GPU utilisation: yolor-elan-nano (160 px, batch 64) and yolor-elan (640, batch 16)
#   6. a 4-trial search on the GPU, two trials sharing it (budget.gpu=0.5); skipped, not failed, where ray or
#      mlflow is not installed
#   7. the search's Pareto front, read back from MLflow (skipped with step 6)
#   8. full training under torchrun: one epoch of yolor-elan-nano on digits with AMP; two processes where there are
#      two GPUs (NCCL takes one GPU per process; two processes on one machine are tested on CPU with gloo)
# benchmarks/data_loading.py (the loader at 640 with several workers) runs apart: it does not fit the 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0 INSTALL=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --install) INSTALL=1 ;;  # step 1, run by this script under its timeout
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-runs/gpu-check}
BUDGET=480 GRACE=5
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONUNBUFFERED=1
# what python3 on the lent GPU machine lacks: the wheels that travel in .whl/
WHEELS=(pydantic pydantic_core annotated_types typing_inspection fvcore iopath yacs termcolor optuna alembic sqlalchemy
        mako colorlog pycocotools)
NEEDED=(gpnas.experiments.config gpnas.objectives.complexity gpnas.objectives.accuracy optuna)
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('gpnas') is None)" 2>/dev/null; then
  export PYTHONPATH=/tmp/gp:/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # step 1 fills them
fi

# ---- each step's timeout in seconds, and the exact arguments (the dry run parses these same arrays)
T_ENV=10 T_INSTALL=30 T_DATA=30 T_LATENCY=55 T_PREDICTOR=70 T_THROUGHPUT=50 T_HAS_RAY=10 T_SEARCH=90 T_FRONT=10
T_TRAIN=60
TIMEOUTS=("$T_ENV" "$T_INSTALL" "$T_DATA" "$T_LATENCY" "$T_PREDICTOR" "$T_THROUGHPUT" "$T_HAS_RAY" "$T_SEARCH"
          "$T_FRONT" "$T_TRAIN")
LATENCY=(benchmarks/gpu_latency.py --presets yolor-v3 yolor-prn yolor-csp yolor-elan --device cuda --dtype fp16
         --img 640 --warmup 50 --warmup-seconds 1 --repeats 20 --iters 20 --cuda-graph both --json "$OUT/latency.json")
PREDICTOR=(benchmarks/latency_predictor.py --n 16 --device cuda --dtype fp16 --img 640 --warmup-seconds 0.1
           --no-load)
THROUGHPUT=(benchmarks/gpu_training_throughput.py --device cuda --presets yolor-elan-nano --batches 64 --steps 60
            --paper --paper-presets yolor-elan --paper-batches 16 --settings on)
OVERRIDES=(name=gpu-check "storage.root=$OUT/search" budget.num_trials=4 budget.max_concurrent=2 budget.gpu=0.5
           budget.cpu=2 train.device=cuda train.steps=100 latency.device=cuda latency.dtype=fp16
           latency.warmup_seconds=0.1)
SEARCH=(search --config demo "${OVERRIDES[@]}")
FRONT=(front gpu-check --root "$OUT/search")
TRAIN=(train yolor-elan-nano --data digits --epochs 1 --device cuda --out "$OUT/full-train" --no-mlflow)
torchrun_args() { echo --standalone --nproc_per_node "$1" -m gpnas.experiments.cli; }

install() {  # step 1: nothing where $PY imports the project; else the wheels and the symlinks
  if [ "$DRY" = 1 ]; then
    "$PY" -m pip --version || return 1
    [ -d .whl ] || { echo "no .whl/ here: a machine without the dependencies needs it"; return 0; }
    local missing=() w
    for w in "${WHEELS[@]}"; do compgen -G ".whl/${w}-*.whl" >/dev/null || missing+=("$w"); done
    [ ${#missing[@]} = 0 ] || { echo "missing in .whl/: ${missing[*]}"; return 1; }
    echo "wheels: ${#WHEELS[@]} of ${#WHEELS[@]} in .whl/"; return 0
  fi
  if "$PY" benchmarks/gpu_check.py imports "${NEEDED[@]}"; then return 0; fi
  mkdir -p /tmp/gp/gpnas
  for p in search_space trainers objectives results experiments; do ln -sfn "$PWD/$p" "/tmp/gp/gpnas/$p"; done
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || return 1
  fi
  "$PY" benchmarks/gpu_check.py imports "${NEEDED[@]}"
}
if [ "$INSTALL" = 1 ]; then install; exit; fi

FAILED=() SKIPPED=()
step() {  # step N SECONDS TITLE CMD...: CMD under its timeout (the dry run: at most 30 s); a failure is reported
  local n=$1 seconds=$2 title=$3 rc; shift 3
  [ "$DRY" = 1 ] && seconds=$(( seconds < 30 ? seconds : 30 ))
  echo "== $n. $title"
  timeout -k "$GRACE" "$seconds" "$@"
  rc=$?
  if [ "$rc" != 0 ]; then echo "step $n failed ($rc)"; FAILED+=("$n"); fi
  return "$rc"
}

check_budget() {
  local total=0 t
  for t in "${TIMEOUTS[@]}"; do total=$(( total + t + GRACE )); done
  echo "timeouts: ${total} s of ${BUDGET} s (${#TIMEOUTS[@]} timeouts with ${GRACE} s of grace each)"
  [ "$total" -le "$BUDGET" ]
}

dry_run() {
  local c
  for c in timeout "$PY"; do command -v "$c" >/dev/null || { echo "step - failed: no $c here"; FAILED+=(-); }; done
  command -v nvidia-smi >/dev/null || echo "note: no nvidia-smi here (the GPU utilisation of step 5 reads n/a)"
  step 0 "$T_ENV" "the machine (parse)" "$PY" benchmarks/gpu_check.py --parse-only env --require-cuda \
    --gpus-file "$OUT/gpus.txt"
  step 1 "$T_INSTALL" "the install (pip, .whl/)" bash benchmarks/gpu_check.sh --install --dry-run
  step 2 "$T_DATA" "the digits set (parse)" "$PY" benchmarks/gpu_check.py --parse-only data
  step 3 "$T_LATENCY" "CUDA latency (parse)" "$PY" "${LATENCY[@]}" --parse-only
  step 4 "$T_PREDICTOR" "latency predictor (parse)" "$PY" "${PREDICTOR[@]}" --parse-only
  step 5 "$T_THROUGHPUT" "training throughput (parse)" "$PY" "${THROUGHPUT[@]}" --parse-only
  step 6 "$T_SEARCH" "search: its command line and config (parse)" "$PY" benchmarks/gpu_check.py parse \
    cli "${SEARCH[@]}" --- config demo "${OVERRIDES[@]}"
  step 7 "$T_FRONT" "front (parse)" "$PY" benchmarks/gpu_check.py --parse-only "${FRONT[@]}"
  # shellcheck disable=SC2046  # torchrun_args: words by design
  step 8 "$T_TRAIN" "torchrun and full training (parse)" "$PY" benchmarks/gpu_check.py parse \
    torchrun $(torchrun_args 2) "${TRAIN[@]}" --- cli "${TRAIN[@]}"
  echo "== ray and mlflow here (steps 6-7 skip, not fail, without them)"
  timeout -k "$GRACE" "$T_HAS_RAY" "$PY" benchmarks/gpu_check.py imports --find-only ray mlflow
}

search_steps() {  # steps 6 and 7, where ray and mlflow import
  local why
  why=$(timeout -k "$GRACE" "$T_HAS_RAY" "$PY" benchmarks/gpu_check.py imports ray mlflow)
  case $? in
    0) ;;
    3) echo "== 6. search: skipped: $why"
       echo "== 7. front: skipped (no search)"; SKIPPED+=(6 7); return ;;
    *) echo "$why"; echo "step 6 failed (checking for ray and mlflow)"; FAILED+=(6); return ;;
  esac
  rm -rf "$OUT/search/gpu-check"
  step 6 "$T_SEARCH" "a 4-trial search, two trials sharing the GPU" "$PY" -m gpnas.experiments.cli "${SEARCH[@]}" \
    && step 7 "$T_FRONT" "its Pareto front in MLflow" "$PY" benchmarks/gpu_check.py "${FRONT[@]}"
}

run() {
  step 0 "$T_ENV" "the machine" "$PY" benchmarks/gpu_check.py env --require-cuda --gpus-file "$OUT/gpus.txt"
  step 1 "$T_INSTALL" "the install" bash benchmarks/gpu_check.sh --install
  step 2 "$T_DATA" "the digits set" "$PY" benchmarks/gpu_check.py data
  step 3 "$T_LATENCY" "CUDA latency of the paper-scale presets, 640, batch 1, fp16" "$PY" "${LATENCY[@]}"
  step 4 "$T_PREDICTOR" "predicted vs measured on this GPU's per-layer table, 16 candidates" "$PY" "${PREDICTOR[@]}"
  step 5 "$T_THROUGHPUT" "AMP training images/s and GPU utilisation" "$PY" "${THROUGHPUT[@]}"
  search_steps
  local gpus nproc=2
  gpus=$(cat "$OUT/gpus.txt" 2>/dev/null || echo 0)
  if [ "$gpus" -lt 2 ]; then
    nproc=1
    echo "($gpus GPU here: NCCL takes one GPU per process, so torchrun starts 1 process; 2 processes on one machine" \
         "are tested on CPU with gloo: tests/test_full_training.py)"
  fi
  rm -rf "$OUT/full-train"
  # shellcheck disable=SC2046  # torchrun_args: words by design
  step 8 "$T_TRAIN" "full training under torchrun ($nproc process(es)), 1 epoch" "$PY" -m torch.distributed.run \
    $(torchrun_args "$nproc") "${TRAIN[@]}"
}

main() {
  local start=$SECONDS
  check_budget || { echo "the timeouts exceed the ${BUDGET} s budget"; return 2; }
  if [ "$DRY" = 1 ]; then dry_run; else run; fi
  echo "== done in $(( SECONDS - start )) s${SKIPPED[*]:+; skipped: steps ${SKIPPED[*]}}"
  if [ ${#FAILED[@]} != 0 ]; then echo "failed: steps ${FAILED[*]}"; return 1; fi
  echo "every step passed"
}

if [ "$DRY" = 1 ]; then
  main
else
  mkdir -p "$OUT"
  main 2>&1 | tee "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
