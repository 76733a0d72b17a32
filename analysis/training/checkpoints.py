"""Per-epoch training checkpoints: one safetensors file, written then renamed, no pickle.

The file holds the model's parameters and buffers (`model.*`), the optimizer's momentum
buffers (`momentum.<i>`, in parameter order) and, as safetensors metadata, a JSON record of the
completed epoch, the metric history and the caller's bookkeeping (lineage id, run ids). The
data order and augmentation of each epoch derive from (seed, epoch), so no RNG state is needed
for a resumed run to end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from ..data import cache_dir


def checkpoint_path(fingerprint: str) -> Path:
    return cache_dir() / "checkpoints" / f"{fingerprint}.safetensors"


def read_meta(path: Path) -> dict | None:
    """The metadata of a complete checkpoint, or None when there is none. Temporary files of a
    writer killed mid-save are removed: they were never renamed, so never taken as complete."""
    for partial in path.parent.glob(f".{path.name}.*.tmp"):
        partial.unlink(missing_ok=True)
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["meta"])


def save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf.detach().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)  # atomic: a reader sees the old checkpoint or the new one, never half


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load weights and momentum in place; returns the metadata."""
    tensors = load_file(str(path))
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        if f"momentum.{i}" in tensors:
            optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(tensors[f"momentum.{i}"])
    return read_meta(path)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
