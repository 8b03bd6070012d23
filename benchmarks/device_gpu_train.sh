#!/usr/bin/env bash
# The GPU checks of benchmarks/gpu_train.py as one prepared command for a lent H100 (the `device`
# tool), which has PyTorch and transformers but no pydantic and no network. Once, here:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
#       typing_extensions==4.16.0
#
# then run `bash benchmarks/device_gpu_train.sh` there with carry [".whl"] and a timeout of about
# 540 s; everything it finds lands in $OUT (gpu_train.json, the log, versions, nvidia-smi).
# GPU_TRAIN_ARGS adds arguments (e.g. --smoke, to try this script on a CPU).
set -uo pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"
python3 -c "import torch, transformers, pydantic; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pydantic', pydantic.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee "$OUT/versions.txt"
timeout 500 python3 benchmarks/gpu_train.py --out "$OUT" ${GPU_TRAIN_ARGS:-} 2>&1 | tee "$OUT/gpu_train.log"
