#!/usr/bin/env bash
# Every GPU figure in one go (about 5 minutes on one H100/H200), into $OUT (default gpu-bench/):
#   the training step at batch 32 and 512, eager and through torch.compile, on 1 GPU and on all of them
#   (DDP over NCCL), the RL step, and the wall time of the whole seed pipeline on one GPU.
# Needs a CUDA build of PyTorch and this package installed (pip install -e .).
#   bash examples/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.csv"
GPUS=$(nvidia-smi -L | wc -l)
RANKS="1"
if [ "$GPUS" -gt 1 ]; then RANKS="1 $GPUS"; fi
python - <<'PY' | tee "$OUT/torch.txt"
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name()}")
PY
python examples/bench_ranks.py --device cuda --ranks $RANKS --batches 32 512 --compile --rounds 2 --steps 50 \
    --warmup 10 --rl-steps 3 --json "$OUT/ranks.json" | tee "$OUT/ranks.txt"
# The whole seed pipeline on one GPU (the embedded corpus: nothing to download); the stage wall times
# it prints leave out the start-up (imports, data, the CUDA context).
started=$(date +%s%N)
python examples/run_all.py --backend torch --device cuda --data embedded --no-progress --runs-dir "$OUT/runs" \
    --name seed-cuda | tee "$OUT/pipeline.txt"
echo "seed pipeline, whole command: $(( ($(date +%s%N) - started) / 1000000 )) ms" | tee -a "$OUT/pipeline.txt"
