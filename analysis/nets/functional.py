"""Functional operations as layers: the residual `+` of a torchvision BasicBlock, a ViT's class
token `x[:, 0]`, a `torch.flatten`, which are not modules, so no hook fires on them.

Named as torchvision's feature extraction names them (torchvision.models.feature_extraction):
the path of the module whose forward runs the operation, then the operation's torch.fx node name
(`layer1.0.add`, `encoder.layers.encoder_layer_0.add_1`, `flatten`). Each module that holds others
is traced on its own with torch.fx, every module under it kept as a call (so their hooks still
fire and the module tree is unchanged); the operations whose result is a tensor are its
functional layers. A module whose forward torch.fx cannot trace (Python control flow on tensor
values) offers none.

To tap one, the owner's traced graph gets an identity module (`Tap`) right after the operation,
registered as the owner's child under the operation's name, and the owner's forward becomes that
graph's code, bound to the owner (an instance attribute: its class, hooks and tensors stay its own,
and move with it): the network computes what it computed (an in-place `+=` becomes `+`), and the tap is a
module like any other, reached by name through nets.forward.tapped.
"""

from __future__ import annotations

import dataclasses
import types

import torch
from torch import fx, nn

__all__ = ["Tap", "functional_layers", "expose"]

FUNCTIONAL_OPS = ("call_function", "call_method")


class Tap(nn.Identity):
    """Hands on a functional operation's result, so a hook can read it by name."""


class _ChildrenAsCalls(fx.Tracer):
    """Traces one module's own forward: every module under it stays a call, never inlined."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class FunctionalLayer:
    owner: str  # the module whose forward runs it ("" for the network itself)
    node: str  # its torch.fx node name in the owner's graph

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.node}" if self.owner else self.node


def _trace(owner: nn.Module) -> fx.Graph | None:
    try:
        return _ChildrenAsCalls().trace(owner)
    except Exception:  # torch.fx fails in many ways (TraceError, TypeError, ...) on untraceable Python: no functional layers
        return None


class _TensorNodes(fx.Interpreter):
    """Runs a traced graph on real inputs, noting the functional nodes whose result is a tensor."""

    def __init__(self, module: fx.GraphModule):
        super().__init__(module)
        self.tensors: list[str] = []

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.op in FUNCTIONAL_OPS and isinstance(out, torch.Tensor):
            self.tensors.append(n.name)
        return out


@torch.inference_mode()
def functional_layers(model: nn.Module, inputs: torch.Tensor) -> list[FunctionalLayer]:
    """Every functional operation of `model` whose result is a tensor, owners in the order they first
    run on `inputs` (a batch as the model takes it), operations in their owner's order."""
    owners = {name: m for name, m in model.named_modules() if name == "" or any(True for _ in m.children())}
    was_training = model.training
    found = []
    try:
        model.eval()  # BatchNorm's running statistics stay as they are
        for name, (args, kwargs) in _first_inputs(model, owners, inputs).items():
            graph = None if kwargs else _trace(owners[name])  # a graph's inputs are positional: keyword calls are left out
            if graph is None:
                continue
            recorder = _TensorNodes(fx.GraphModule(owners[name], graph))
            try:
                recorder.run(*args)
            except Exception:  # the graph needs what the trace could not see (tensor-dependent shapes, ...)
                continue
            found += [FunctionalLayer(name, node) for node in recorder.tensors]
    finally:
        model.train(was_training)
    return found


def _first_inputs(model: nn.Module, owners: dict[str, nn.Module], inputs: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    """Each of the `owners` that runs when `model` takes `inputs`: its (args, kwargs) at its first
    call, in the order they first run."""
    seen: dict[str, tuple[tuple, dict]] = {}

    def capture_for(name: str):
        def capture(_module, args, kwargs) -> None:
            seen.setdefault(name, (args, kwargs))

        return capture

    handles = [m.register_forward_pre_hook(capture_for(n), with_kwargs=True) for n, m in owners.items()]
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def expose(model: nn.Module, layers: list[FunctionalLayer]) -> None:
    """Give each functional layer a Tap in its owner's forward (see the module doc). Taps already in
    place stay; exposing one twice is a no-op."""
    by_owner: dict[str, set[str]] = {}
    for layer in layers:
        by_owner.setdefault(layer.owner, set()).add(layer.node)
    for owner_name, nodes in by_owner.items():
        owner = model.get_submodule(owner_name)
        tapped = {name for name, child in owner.named_children() if isinstance(child, Tap)}
        if nodes <= tapped:
            continue
        graph = _trace(owner)
        for node in list(graph.nodes):
            if node.name in nodes | tapped:
                if node.name not in tapped:
                    if hasattr(owner, node.name):
                        raise ValueError(f"layer {FunctionalLayer(owner_name, node.name).name!r}: {owner_name or 'the network'} "
                                         f"already has an attribute {node.name!r}; this operation cannot be tapped")
                    owner.add_module(node.name, Tap())
                with graph.inserting_after(node):
                    tap = graph.call_module(node.name, (node,))
                node.replace_all_uses_with(tap, delete_user_cb=lambda user, tap=tap: user is not tap)
        code = type(fx.GraphModule(owner, graph)).forward  # the graph as Python, reading every module off `self`
        owner.forward = types.MethodType(code, owner)  # bound to the owner: its own modules and tensors, wherever they move
