#!/usr/bin/env bash
# The proxy study's long-training reference on one GPU (benchmarks/proxy_study.py, settings ref-*): many
# single-thread runs share the card. For the device machine of this workplace (Python 3.12 with a CUDA torch and
# no project install): the missing wheels travel in .whl/, the package is put on the path through symlinks.
# Every finished run lands in ${OUT:-runs/gpu-reference}/proxy_study_gpu.jsonl; merge it into
# benchmarks/data/proxy_study.jsonl (rows record the device) with `cat FILE >> benchmarks/data/proxy_study.jsonl`.
#   bash benchmarks/gpu_reference.sh [SECONDS] [WORKERS] [SETTINGS...]
set -uo pipefail
cd "$(dirname "$0")/.."
LIMIT=${1:-420}; WORKERS=${2:-14}; shift 2 2>/dev/null || shift $#
SETTINGS=${*:-ref-2400 x2-ref-2400 ref-4800}
SEEDS=${SEEDS:-0 1 2 3}
OUT=${OUT:-runs/gpu-reference}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
if ! "${PY:-python3}" -c "import gpnas.trainers" 2>/dev/null; then
  if [ -d .whl ]; then
    "${PY:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  mkdir -p /tmp/gp/gpnas
  for p in search_space trainers objectives results experiments; do ln -sfn "$PWD/$p" "/tmp/gp/gpnas/$p"; done
  export PYTHONPATH=/tmp/gp${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"${PY:-python3}" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
nproc
if [ "${LATENCY:-1}" = 1 ]; then
  echo "== CUDA latency of the paper-scale presets, 640, batch 1, fp16"
  for a in yolor-v3 yolor-prn yolor-csp yolor-elan; do
    timeout 60 "${PY:-python3}" -m gpnas.experiments.cli latency $a --device cuda --dtype fp16 --img 640 --warmup 50 \
      --repeats 30 --json > "$OUT/latency_$a.json" \
      && "${PY:-python3}" -c "import json,sys; r=json.load(open(sys.argv[1]))['measured']; print(f'$a: median {r[\"median_ms\"]:.3f} ms, IQR {r[\"iqr_ms\"]:.3f}, CV {r[\"cv\"]:.4f}')" "$OUT/latency_$a.json"
  done
fi
timeout "$LIMIT" "${PY:-python3}" benchmarks/proxy_study.py run --settings $SETTINGS --seeds $SEEDS ${ARCH:+--arch $ARCH} --workers "$WORKERS" \
  --device "${DEVICE:-cuda}" --out "$OUT/proxy_study_gpu.jsonl" 2>&1 | tee "$OUT/reference.log"
echo "rows: $(wc -l < "$OUT/proxy_study_gpu.jsonl" 2>/dev/null || echo 0)"
