#!/usr/bin/env bash
# The whole GPU check in one go (fits ~8 minutes on one H200): GPU-only tests, then benchmarks/gpu.py.
#   bash benchmarks/gpu_run.sh            # on the GPU machine; results under $OUT (else results/gpu)
#   DRY_RUN=1 bash benchmarks/gpu_run.sh  # the same on CPU: GPU tests skip with their reason, tiny shapes
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${OUT:-results/gpu}"
mkdir -p "$OUT_DIR"
python -c "import jax; print('jax', jax.__version__, jax.default_backend(), jax.devices())" 2>&1 | tee "$OUT_DIR/env.txt"
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv >> "$OUT_DIR/env.txt" 2>&1 || true

# 1. GPU-only tests (named test_gpu_*; they skip with a reason without a GPU), ~1-2 min
timeout 180 python -m pytest -q -rs -p no:cacheprovider tests/test_backend_*.py \
  -k "test_gpu_" 2>&1 | tee "$OUT_DIR/gpu_tests.txt"
echo "gpu tests rc=${PIPESTATUS[0]}" | tee -a "$OUT_DIR/gpu_tests.txt"

# 2. benchmark; writes gpu.json/gpu.md after every config, skips configs that would start after 240 s
if [ "${DRY_RUN:-0}" = "1" ]; then
  timeout 300 python benchmarks/gpu.py --dry-run --reps 1 --out "$OUT_DIR" 2>&1 | tail -n 3
else
  timeout 300 python benchmarks/gpu.py --out "$OUT_DIR" --reps 5 --budget-s 240 2>&1 | tee "$OUT_DIR/gpu_bench.log" | tail -n 80
fi
echo "benchmark rc=${PIPESTATUS[0]}"
