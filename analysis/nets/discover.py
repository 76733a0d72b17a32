"""The layers of any network, found by running it once: what a model from outside this project
(a torchvision, timm or exported model) offers to be compared, named as its modules are.

A network's module tree says what it holds, not what it runs: torch.nn.MultiheadAttention holds
an `out_proj` it never calls, a torchvision BasicBlock calls one ReLU twice, an Identity or a
Dropout hands on its input. So the layers are read off one forward pass of two images, with a
hook on every module:

- every module that ran, in the order its output was computed, is a layer; a module that ran K
  times is K layers, NAME@1 ... NAME@K (nets.forward.tapped reaches each call);
- "all": the innermost of them (no module inside them ran), less those that hand on their very
  input at evaluation (Identity, Dropout, DropPath, and their nodes in an exported graph);
- "blocks": the outputs of a network's repeated blocks: the children of every module whose
  children are two or more modules of one class, each holding modules of its own (torchvision's
  ResNet `layer1.0` ..., its ViT `encoder.layers.encoder_layer_0` ..., timm's `blocks.0` ...;
  the same names in an exported graph, whose modules all have one class);
- anything else: a comma list of shell-style patterns over every layer's name, functional
  operations included (nets/functional.py: `layer1.0.add`), which are tapped when a pattern
  names them.
"""

from __future__ import annotations

import fnmatch
from collections import Counter

import torch
from torch import nn

from .forward import CALL_MARK, as_input, split_call
from .functional import FunctionalLayer, Tap, expose, functional_layers

__all__ = ["Layers", "run_layers"]


class Layers:
    """The layers one forward pass of a network ran, and the sets of them that can be asked for."""

    def __init__(self, order: list[str], modules: dict[str, nn.Module], calls: Counter, passing: set[str], outputs: int,
                 images: torch.Tensor):
        self.order = order  # every layer (a module, or NAME@K for a module run K times), in forward order
        self.outputs = outputs  # the width of the network's output: its classes
        self.images = images  # the two uint8 images it was found with
        self._modules, self._calls, self._passing = modules, calls, passing
        self._functional: list[FunctionalLayer] | None = None  # found when first asked for: it traces every module

    def functional(self, model: nn.Module) -> list[str]:
        """The names of `model`'s functional operations (nets/functional.py), tapped or not."""
        if self._functional is None:
            self._functional = functional_layers(model, as_input(self.images, next(model.parameters()).device))
        return [f.name for f in self._functional]

    def tapping(self, model: nn.Module, which: str) -> Layers:
        """These layers, or, where a pattern of `which` names functional operations not yet tapped,
        `model` with them tapped and its layers found again."""
        if which in ("all", "blocks"):
            return self
        patterns = _patterns(which)
        self.functional(model)
        wanted = [f for f in self._functional if f.name not in self._calls and any(fnmatch.fnmatchcase(f.name, p) for p in patterns)]
        if not wanted:
            return self
        expose(model, wanted)
        found = run_layers(model, self.images)
        found._functional = self._functional
        return found

    def select(self, which: str) -> list[str]:
        """The layers of `which`: "all", "blocks" or a comma list of patterns (see the module doc)."""
        if which == "all":
            return [n for n in self.order if self._innermost(n) and not self._passes_through(n)]
        if which == "blocks":
            blocks = self._blocks()
            found = [n for n in self.order if split_call(n)[0] in blocks]
            if not found:
                raise ValueError("layers=blocks: this network has no repeated blocks (a module holding two or more modules "
                                 "of one class, each with modules of its own); name its layers by pattern, -P layers=list "
                                 "prints them")
            return found
        patterns = _patterns(which)
        for pattern in patterns:
            if not fnmatch.filter(self.order, pattern):
                runs = self._calls.get(pattern, 0)
                hint = (f"{pattern!r} runs {runs} times in one forward pass: name each call ({pattern}@1 ... {pattern}@{runs})"
                        if runs > 1 else f"{pattern!r} matches no layer that runs ({self.order[0]}, ..., {self.order[-1]})")
                raise ValueError(f"layers={which!r}: {hint}; -P layers=list prints them all")
        return [n for n in self.order if any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    def _innermost(self, name: str) -> bool:
        prefix = split_call(name)[0] + "."
        return not any(other.startswith(prefix) for other in self._calls)

    def _passes_through(self, name: str) -> bool:
        return split_call(name)[0] in self._passing

    def _blocks(self) -> set[str]:
        out = set()
        for name, module in self._modules.items():
            children = [(n, child) for n, child in module.named_children() if not isinstance(child, Tap)]
            if (len(children) >= 2 and len({type(child) for _, child in children}) == 1
                    and all(any(True for _ in child.children()) for _, child in children)):
                out.update(f"{name}.{child}" for child, _ in children)
        return out


def _patterns(which: str) -> list[str]:
    return [p.strip() for p in which.split(",") if p.strip()]


@torch.inference_mode()
def run_layers(model: nn.Module, images: torch.Tensor) -> Layers:
    """Run `model` (in eval mode) on two of the uint8 `images` with every module hooked; its layers.
    A network whose output is not logits (N, classes) is refused."""
    modules = dict(model.named_modules())
    del modules[""]
    calls: Counter = Counter()
    order: list[tuple[str, int]] = []
    computing: set[str] = set()  # modules whose output is not their input, untouched
    before: dict[str, torch.Tensor | None] = {}  # each module's input as it was (an in-place op returns its input, changed)

    def pre_hook_for(name: str):
        def pre_hook(_module, inputs) -> None:
            before[name] = inputs[0].clone() if inputs and isinstance(inputs[0], torch.Tensor) else None

        return pre_hook

    def hook_for(name: str):
        def hook(_module, inputs, output) -> None:
            calls[name] += 1
            order.append((name, calls[name]))
            if before.get(name) is None or output is not inputs[0] or not torch.equal(output, before[name]):
                computing.add(name)

        return hook

    handles = [h for n, m in modules.items()
               for h in (m.register_forward_pre_hook(pre_hook_for(n)), m.register_forward_hook(hook_for(n)))]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        out = model(as_input(images[:2], device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(f"the network returns {type(out).__name__}{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}, "
                         "not logits (N, classes); wrap it so that forward returns them")
    names = [n if calls[n] == 1 else f"{n}{CALL_MARK}{k}" for n, k in order]
    return Layers(names, modules, calls, set(calls) - computing, out.shape[1], images[:2])
