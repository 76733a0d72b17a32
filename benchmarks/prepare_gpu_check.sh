#!/usr/bin/env bash
# Prepares a GPU check for a machine that has PyTorch but neither network nor mlflow (such as this
# project's lent H200: Python 3.12, torch 2.11). Run here, where pip works, from the repository root:
#
#   bash benchmarks/prepare_gpu_check.sh [CIFAR10_IMAGEFOLDER]      # default: $WIDEDEEP_DATA_DIR
#
# It fills .gpu/ (git-ignored; carry it along with the working tree, 64 MiB at most):
#   .gpu/wheels/    mlflow, optuna and pytorch-cka, and what they need that the GPU image lacks
#   .gpu/cifar10/   the GPU study's data: the class-stratified 1/16 of CIFAR-10's training set that
#                   `data_fraction=0.0625` picks (3,120 images) and the 10,000 test images
# Then, on the GPU machine: `bash benchmarks/gpu_check.sh` (it finds both).
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir=${1:-${WIDEDEEP_DATA_DIR:?give a CIFAR-10 ImageFolder (train/, test/) or set WIDEDEEP_DATA_DIR}}
python=${PYTHON:-python3}
rm -rf .gpu && mkdir -p .gpu/wheels

# Every requirement of mlflow and optuna as Python 3.12 manylinux wheels, then only those the GPU
# image does not hold already (its package list, as read from the machine on 2026-11-17).
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$python" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .gpu/all mlflow==3.17.2 optuna==5.0.0
"$python" -m pip download -q --no-deps --only-binary=:all: -d .gpu/all pytorch-cka==1.1.3
"$python" - .gpu/all .gpu/wheels <<'EOF'
import re, shutil, sys
from pathlib import Path

ON_THE_IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython filelock fonttools frozenlist fsspec grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub idna imageio iniconfig jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities lxml markdown
markdown-it-py markupsafe matplotlib mdurl mpmath msgpack multidict networkx ninja numpy nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx
packaging pandas pathspec pillow pip pluggy prometheus-client propcache protobuf psutil pyarrow pygments pyparsing
python-dateutil pytest pyyaml regex requests rich safetensors scikit-image scikit-learn scipy setuptools six sympy tabulate
threadpoolctl tifffile torch torchvision tqdm triton typing-extensions urllib3 werkzeug wheel wrapt yarl zipp""".split()
have = {re.sub(r"[-_.]+", "-", n).lower() for n in ON_THE_IMAGE}
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    if name not in have:
        shutil.copy(wheel, sys.argv[2])
EOF
rm -rf .gpu/all

# The GPU study's data: the 1/16 subset exactly as data_fraction=0.0625 picks it, and the test set.
"$python" - "$source_dir" .gpu/cifar10 <<'EOF'
import shutil, sys
from pathlib import Path

import torch

from analysis.data import subset_indices

source, target = Path(sys.argv[1]), Path(sys.argv[2])
classes = sorted(d.name for d in (source / "train").iterdir() if d.is_dir())
files = [(c, p) for c in classes for p in sorted((source / "train" / c).iterdir())]
labels = torch.tensor([classes.index(c) for c, _ in files])
for i in subset_indices(labels, 0.0625, 0).tolist():
    c, p = files[i]
    (target / "train" / c).mkdir(parents=True, exist_ok=True)
    shutil.copy(p, target / "train" / c / p.name)
shutil.copytree(source / "test", target / "test")
EOF
du -sh .gpu .gpu/wheels .gpu/cifar10
