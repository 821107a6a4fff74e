#!/usr/bin/env bash
# The whole GPU path in under 5 minutes (benchmarks/gpu_check.py): strict CUDA (no CPU fallback) for each shipped
# model, plain and --cuda-friendly; CUDA fp16, TensorRT fp16 and TensorRT int8 (the INT8 file through its
# calibration table) agreement with the CPU FP32 reference; `verify --engine tensorrt`; fps per configuration.
# Without a GPU it stops at the first step that needs one, on one line starting "gpu_check: STOPPED HERE" (exit 3).
#   bash benchmarks/gpu_check.sh [REPORT.json]              # on a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run [REPORT.json]    # anywhere: checks the script's own plumbing on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
dry=()
if [[ "${1:-}" == "--dry-run" ]]; then dry=(--dry-run); shift; fi
"$python" -c "import onnxruntime as o; print('gpu_check: onnxruntime', o.__version__, 'providers', o.get_available_providers())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || echo "gpu_check: no nvidia-smi on this machine"
set +e
timeout 300 "$python" benchmarks/gpu_check.py "${dry[@]}" --json "${1:-gpu_check.json}" --work "${WORK:-gpu_check_work}"
code=$?
set -e
if [[ $code -eq 124 ]]; then echo "gpu_check: STOPPED HERE: the 5-minute limit ran out (see the last step above)" >&2; fi
exit $code
