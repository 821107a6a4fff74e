#!/usr/bin/env bash
# The whole GPU check in under 5 minutes: strict CUDA session of each shipped model, --cuda-friendly vs
# not, FP32/FP16 agreement with the CPU FP32 reference, fps. Runs today up to where a GPU is needed and
# says there, on one line starting "gpu_check: STOPPED HERE", what it could not do (exit 3).
#   bash benchmarks/gpu_check.sh [benchmarks/results/gpu_check.json]
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
"$python" -c "import onnxruntime as o; print('gpu_check: onnxruntime', o.__version__, 'providers', o.get_available_providers())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "gpu_check: no nvidia-smi on this machine"
exec timeout 300 "$python" benchmarks/gpu_check.py --json "${1:-gpu_check.json}" --work "${WORK:-gpu_check_work}"
