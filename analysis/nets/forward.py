"""Running a network over uint8 images in batches, with layers reached by name.

This is the one forward-pass loop of the project: CKA, PC1, probes, deletion and evaluation all
call `stream`. Each forward hook hands a layer's output to a reduction (a Gram for CKA, a
projection for PCA, X^T X for a probe) and only that reduction's result is kept, so memory stays
O(layers x what the reductions keep), never a layer's activations over the data set.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import to_float
from ..device import activation_precision, flat_features

__all__ = ["as_input", "CALL_MARK", "split_call", "tapped", "batch_statistics", "stream", "feature_widths", "predict_logits", "score_logits", "evaluate"]

OnOutput = Callable[[int, torch.Tensor, slice], None]


def as_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A uint8 batch as the nets take it: floats in [0, 1] on `device`, channels_last."""
    return to_float(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)


CALL_MARK = "@"  # 'layer1.0.relu@2': the second call of a module that runs several times per forward pass


def split_call(name: str) -> tuple[str, int | None]:
    """'layer1.0.relu@2' -> ('layer1.0.relu', 2); a plain name -> (name, None), its only call."""
    module, mark, call = name.rpartition(CALL_MARK)
    return (module, int(call)) if mark and call.isdigit() and int(call) >= 1 else (name, None)


@contextlib.contextmanager
def tapped(model: torch.nn.Module, names: Sequence[str], on_output: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """While open, every forward pass calls on_output(i, output) for layer names[i]: a module's
    name, or 'NAME@K' for the K-th call (from 1) of a module that runs several times in one pass.
    Whatever on_output returns is dropped: the layer's output passes on unchanged.

    Guards against what silently breaks other CKA tools:
    - on_output runs inside the layer's hook, before any later operation: an in-place op after the
      layer (ReLU(inplace=True)) cannot change what it sees; a caller that keeps the tensor past
      the hook must clone it (what it keeps is the layer's output, not a copy);
    - a layer whose output is a tuple or list (a transformer block) hands on its first tensor;
    - a module that runs more than once in one forward pass (torchvision's BasicBlock calls one
      ReLU twice) is refused by its plain name, since its "output" would be whichever call came
      last; each call can be named instead (NAME@1, NAME@2);
    - a requested layer that does not run in a forward pass is refused by name (a module defined
      but never called, as in an exported graph)."""
    wanted: dict[str, dict[int | None, int]] = {}  # module -> {call: index in names}
    for i, name in enumerate(names):
        module, call = split_call(name)
        wanted.setdefault(module, {})[call] = i
    calls = dict.fromkeys(wanted, 0)

    def hook_for(module: str):
        def hook(_module, _inputs, output) -> None:
            calls[module] += 1
            k = calls[module]
            if None in wanted[module] and k > 1:
                raise ValueError(f"layer {module!r} ran {k} times in one forward pass (one module used at several places); "
                                 f"name each call ({module}@1, {module}@2, ...) or leave it out of the layers")
            i = wanted[module].get(k, wanted[module].get(None) if k == 1 else None)
            if i is not None:
                on_output(i, _first_tensor(output, names[i]))

        return hook

    def start(*_args) -> None:
        for module in calls:
            calls[module] = 0

    def finish(*_args) -> None:
        silent = [names[i] for i in sorted(i for module, by_call in wanted.items() for call, i in by_call.items()
                                           if calls[module] < (call or 1))]
        if silent:
            raise ValueError(f"layer(s) {', '.join(map(repr, silent[:5]))} did not run in the forward pass (defined but "
                             "never called, or called fewer times); pick layers that compute the output")

    handles = []
    try:
        for module in wanted:
            try:
                target = model.get_submodule(module)
            except AttributeError:
                raise ValueError(f"layer {module!r} is not in the model") from None
            handles.append(target.register_forward_hook(hook_for(module)))
        if names:
            handles.append(model.register_forward_pre_hook(start))
            handles.append(model.register_forward_hook(finish))
        yield
    finally:
        for h in handles:
            h.remove()


def _first_tensor(output, name: str) -> torch.Tensor:
    """A layer's output, or the first tensor of a tuple or list output (a transformer block's hidden states)."""
    if isinstance(output, torch.Tensor):
        return output
    for item in output if isinstance(output, (tuple, list)) else ():
        if isinstance(item, torch.Tensor):
            return item
    raise ValueError(f"layer {name!r} outputs {type(output).__name__}, not a tensor or a tuple holding one")


@contextlib.contextmanager
def batch_statistics(model: torch.nn.Module) -> Iterator[None]:
    """While open, every BatchNorm of `model` normalises with the statistics of the batch it is
    given, as in training, and its stored running statistics are neither used nor changed.

    The authors analyse intermediate checkpoints this way (their `convert_bn_to_train_mode`): the
    stored statistics of a young network are those of its initialisation (mean 0, variance 1),
    so in inference mode its BatchNorms do not normalise at all. A BatchNorm whose running
    buffers are None uses batch statistics even in eval mode, and updates nothing."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    stored = [(m.running_mean, m.running_var) for m in norms]
    try:
        for m in norms:
            m.running_mean = m.running_var = None
        yield
    finally:
        for m, (mean, var) in zip(norms, stored):
            m.running_mean, m.running_var = mean, var


@torch.inference_mode()
def stream(
    model: torch.nn.Module,
    images: torch.Tensor,
    names: Sequence[str] = (),
    on_output: OnOutput | None = None,
    batch_size: int = 1000,
    desc: str = "",
    progress: bool | None = False,
    bf16: bool = False,
) -> torch.Tensor:
    """One pass of `model` (BN in inference mode) over uint8 `images` in batches; for every layer
    in `names`, on_output(i, output, rows) with `rows` the batch's slice of `images`. Returns the
    float32 logits (N, classes) on the model's device. Activations are float32 (TF32 off), or bf16
    under autocast on CUDA with `bf16`. `progress=None` shows a bar on a terminal."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = [slice(0)]
    hooks = tapped(model, names, lambda i, out: on_output(i, out, rows[0])) if names else contextlib.nullcontext()
    logits = []
    try:
        with hooks, activation_precision(device, bf16):
            starts = range(0, len(images), batch_size)
            for s in tqdm(starts, desc=desc, disable=None if progress is None else not progress, leave=False):
                rows[0] = slice(s, s + batch_size)
                logits.append(model(as_input(images[rows[0]], device)).float())
    finally:
        model.train(was_training)
    return torch.cat(logits)


def feature_widths(model: torch.nn.Module, names: Sequence[str], images: torch.Tensor,
                   features: Callable[[torch.Tensor], torch.Tensor] = flat_features, bf16: bool = False) -> list[int]:
    """Per layer, how many features `features(output)` has, from one forward pass of two images."""
    widths = [0] * len(names)
    stream(model, images[:2], names, lambda i, out, _rows: widths.__setitem__(i, features(out).shape[1]), bf16=bf16)
    return widths


def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000, bf16: bool = False) -> torch.Tensor:
    """float32 logits (N, classes) on the model's device; BN in inference mode."""
    return stream(model, images, batch_size=batch_size, bf16=bf16)


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean cross-entropy and accuracy of logits (N, classes) against labels (N,)."""
    labels = labels.to(logits.device)
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
             bf16: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy over the whole set."""
    return score_logits(predict_logits(model, images, batch_size, bf16), labels)
