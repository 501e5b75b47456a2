#!/usr/bin/env bash
# The GPU checks, in one call of under 10 minutes on a CUDA machine (not run by CI; no GPU has been lent yet, so
# this script has not run on one). From the repository root:  bash benchmarks/gpu_check.sh
#   1. end-to-end latency CV of yolor-elan at 640, batch 1, fp16 (target <= 1 %)
#   2. the latency predictor on 20 candidates of the demo space at 640, fp16 (targets: >= 95 % within ±10 %,
#      Spearman >= 0.95)
#   3. training throughput (issue 18): the nano presets at batch 16/64/128 and yolor-elan at 640, speed settings
#      off and on (AMP, channels-last, fused AdamW, cudnn.benchmark): images/s, GPU utilisation, memory
#   4. a 4-trial GPU search (one trial per card at a time)
#   5. the training loader's images/s at 640 with 0, 4 and 8 workers (target >= 150 per worker core)
#   6. full training with AMP on CUDA: 2 epochs on digits (checkpoints, best.pt, report)
# Setup: `make setup` (TORCH_SPEC=torch for a CUDA build where the index is reachable; a machine whose python
# already has a CUDA torch can run with PYTHON=that python and VENV pointing at a venv made with
# --system-site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."
make setup >/dev/null
PY=.venv/bin/python
GPNAS=.venv/bin/gpnas
export PYTHONUNBUFFERED=1 GPNAS_CACHE="${GPNAS_CACHE:-$PWD/runs/gpu-cache}"
$PY - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch: this check needs a GPU"
print(f"GPU: {torch.cuda.get_device_name(0)} · torch {torch.__version__} · CUDA {torch.version.cuda}")
PYEOF
echo "== 1. end-to-end latency of yolor-elan, 640, batch 1, fp16"
$GPNAS latency yolor-elan --device cuda --dtype fp16 --img 640 --warmup 50 --repeats 30 --json \
  | $PY -c "import json,sys; r=json.load(sys.stdin)['measured']; print(f\"median {r['median_ms']:.3f} ms · IQR {r['iqr_ms']:.3f} · CV {r['cv']:.4f} (target <= 0.01)\")"
echo "== 2. latency predictor, 20 candidates at 640, fp16"
timeout 300 $PY benchmarks/latency_predictor.py --n 20 --device cuda --dtype fp16 --img 640
echo "== 3. training throughput: settings off/on, batch 16/64/128, images/s and GPU utilisation"
timeout 240 $PY benchmarks/gpu_training_throughput.py --device cuda --presets yolor-csp-nano yolor-elan-nano \
  --batches 16 64 128 --steps 60 --paper
echo "== 4. a 4-trial GPU search"
rm -rf runs/gpu-smoke
timeout 240 $GPNAS search --config demo name=gpu-smoke budget.num_trials=4 budget.max_concurrent=1 budget.gpu=1 \
  train.device=cuda latency.device=cuda latency.dtype=fp16 train.steps=200 --no-mlflow
echo "== 5. the COCO-like training loader at 640 with 0, 4 and 8 workers (a GPU node's CPUs)"
timeout 240 $PY benchmarks/data_loading.py --images 1000 --workers 0 4 8 --passes 2
echo "== 6. full training with AMP on CUDA"
rm -rf runs/gpu-full
D=$GPNAS_CACHE/digits-v1-s0-160-2000-300
$PY -c "from gpnas.trainers.digits import build_digits_dataset; build_digits_dataset()" >/dev/null
timeout 180 $GPNAS train yolor-elan-nano --data $D/instances_train.json --images $D/train --val-data $D/instances_val.json \
  --val-images $D/val --epochs 2 --device cuda --out runs/gpu-full --no-mlflow
