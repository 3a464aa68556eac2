#!/usr/bin/env bash
# The serving checks for a GPU machine (issue 24), a few minutes in all. Not run on the development machine
# (no GPU there): run it where one is lent, from the repository root, with the project installed:
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default benchmarks/results/gpu)
#
# 1. an SD-v1.5-architecture pipeline folder with random weights at 512² (fp16 on CUDA; random weights are
#    fine for speed);
# 2. one request: MEG CIAG (meg-ue -> meg-edge on CUDA, seed over the air) vs plain diffusers, one prompt;
# 3. served ÷ batched at 16 UEs: bench_serving --quick on that folder and device (16 UEs through meg-channel
#    to meg-edge vs the stock pipeline in a plain script with the 16 prompts in one call).
# Everything it measures lands in OUT_DIR as JSON (and bench_serving's own serving-cuda-quick.json).
set -euo pipefail
out="${1:-benchmarks/results/gpu}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH="${PYTHONPATH:-$PWD}"
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: nothing to check")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" || true
model="$out/sd-v1-5-512"
[[ -d "$model" ]] || meg-edge make-random-model "$model" --size sd-v1-5 --image-size 512 > /dev/null
steps="${MEG_GPU_STEPS:-25}"

# 2a. plain diffusers, one prompt, main thread (best of 2)
python benchmarks/offline_reference.py --model "$model" --device cuda --prompts 1 --steps "$steps" --repeats 2 \
  > "$out/diffusers-one.json"
# 2b. MEG CIAG, one request: an ES on the GPU, the UE on the CPU (its T and C⁻¹ + D), direct (no proxy)
log="$out/edge.log"
meg-edge serve --listen 127.0.0.1:0 --model "$model" --device cuda > "$log" 2>&1 &
es=$!
trap 'kill $es 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  port=$(sed -n 's/^meg-edge listening on port \([0-9]*\)$/\1/p' "$log")
  [[ -n "$port" ]] && break
  kill -0 $es 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
[[ -n "$port" ]] || { echo "the ES did not start"; cat "$log"; exit 1; }
for i in 1 2; do  # the first is warm-up
  meg-ue generate "a red circle above a blue square" --protocol CIAG --via "127.0.0.1:$port" --model "$model" \
    --device cpu --steps "$steps" --out "$out/ciag.png" --json > "$out/ciag-$i.json"
done
kill $es; wait $es 2>/dev/null || true
trap - EXIT

# 3. served ÷ batched at 16 UEs
python -m benchmarks.bench_serving --quick --model "$model" --device cuda | tail -40 > "$out/serving.txt"
cp benchmarks/results/serving/serving-cuda-quick.json "$out/" 2>/dev/null || true
echo "wrote $out"
