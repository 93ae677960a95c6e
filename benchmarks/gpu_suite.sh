#!/usr/bin/env bash
# The GPU machine's one command (issue 14). Prepare here first:
#   ../shared/tools/device-data                                   # CIFAR-10 into .device-data/cifar10
#   .venv/bin/pip download --no-deps -d .device-data/wheels cleanlab==2.9.0 termcolor==3.3.0 \
#       open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth timm==1.0.31     # the clip section (if the machine lacks them)
# then call the device tool with carry [".device-data"] and the command
#   bash benchmarks/gpu_suite.sh            (extra arguments go to gpu_suite.py, e.g. --only audit)
# The machine has no network: the wheels it lacks (cleanlab, termcolor, open_clip and its
# ftfy / wcwidth / timm) travel in .device-data/wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_suite_out}
mkdir -p "$out"
if ls .device-data/wheels/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps .device-data/wheels/*.whl 2>&1 | tail -2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])" >> "$out/gpu.txt"
export PYTHONUNBUFFERED=1
python benchmarks/gpu_suite.py --data .device-data/cifar10 --single-file --out "$out" "$@" 2>&1 | tee "$out/log.txt"
