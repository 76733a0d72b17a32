#!/usr/bin/env bash
# Both benchmarks on CUDA, written to benchmarks/gpu-results.txt. Fits in a few minutes on one
# H100/H200-class GPU. Run from the repository root in an environment with the project installed:
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/gpu-results.txt
{
  echo "# $(date -u +%F) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n1)"
  echo "## training loop vs bare loop (bf16 autocast, channels_last, cudnn.benchmark)"
  python benchmarks/train.py --device cuda --models 20x1,20x2,56x1,56x2 --examples 25600 --test-examples 10000 --repeats 3 --channels-last both
  echo "## CKA: ResNet-56, all 198 layers, 2 batches of 256, against pytorch-cka"
  python benchmarks/cka.py --device cuda --layers all --threads 16
  echo "## analyze: ResNet-110, all 387 layers, every analysis"
  python benchmarks/analyze.py --device cuda --examples 2560 --passes 2
} 2>&1 | tee "$out"
