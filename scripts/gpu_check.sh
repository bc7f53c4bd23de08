#!/usr/bin/env bash
# One prepared run of the CUDA checks on a lent GPU machine with no network: fast SGA kernels,
# bf16 inference throughput, DeepSpeed on NCCL. Python packages it lacks travel as wheels in
# .whl (see the device tool's notes); our sources are used through PYTHONPATH.
# Usage there: bash scripts/gpu_check.sh   (results in $OUT, or ./gpu-out)
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
rat() { python3 -m napari_rat.cli "$@"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  echo "== 1. fast SGA kernels on CUDA"
  timeout 180 rat bench sga --device cuda --what both --max-memory-gb 100 \
    --sizes 2d:128 2d:512 2d:1024 3d:32 3d:64 3d:128 --output "$OUT/bench_sga_cuda.md"
  echo "== 2. inference throughput, bf16 and fp32"
  timeout 130 rat bench predict --device cuda --precision bf16 --tile 512 --halo 32 \
    --sizes 2048x2048 5792x5792 --output "$OUT/bench_predict_cuda_bf16.md"
  timeout 70 rat bench predict --device cuda --precision fp32 --tile 512 --halo 32 \
    --sizes 2048x2048 --output "$OUT/bench_predict_cuda_fp32.md"
  echo "== 3. DeepSpeed ZeRO-2 on NCCL"
  timeout 150 rat train --config configs/quick.yaml --backend deepspeed
  ls -la runs/quick 2>/dev/null
} 2>&1 | tee "$OUT/log.txt"
