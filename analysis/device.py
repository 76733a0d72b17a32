"""Device selection and the numeric settings and memory layout that follow from it."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["resolve_device", "autocast", "full_precision", "activation_precision", "prepare_model", "flat_features",
           "peak_flops"]


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is visible; use device=auto or device=cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not one of auto, cpu, cuda")
    return torch.device(device)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full precision on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """float32 matmuls and convolutions really in float32 while open: TF32 (on by default for
    cuDNN convolutions, and for matmuls under "high" precision) keeps 10 mantissa bits, which moves
    CKA by ~1e-4. No effect on the CPU."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def activation_precision(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """How an analysis computes activations: bf16 autocast (CUDA only) with `bf16`, else true float32."""
    return autocast(device) if bf16 else full_precision()


def prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model


def flat_features(out: torch.Tensor) -> torch.Tensor:
    """A layer's output as (n, features), features in memory order: a view, never a copy, for a
    channels_last activation (the layout prepare_model gives). Every reduction of this project is
    blind to the order of features (Grams) or uses one order throughout (PC1 directions, probe
    weights), so nothing is lost."""
    if out.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last):
        return out.permute(0, 2, 3, 1).reshape(len(out), -1)
    return out.reshape(len(out), -1)


# Dense bf16 tensor-core peak of each GPU, FLOP/s, from the vendors' data sheets (SXM parts, no
# sparsity): the denominator of model FLOP utilisation.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None for the CPU and GPUs not in PEAK_BF16_FLOPS."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)
