"""Networks from outside this project, named by a source string, and the input each declares.

    torchvision:ARCH[?KEY=VALUE&...]        torchvision.models.get_model(ARCH, **kwargs)
    timm:ARCH[?...]                          timm.create_model(ARCH, **kwargs)
    python:MODULE:CALLABLE[?...]             any importable builder, e.g. the researcher's own
    models:/NAME/VERSION[?...]               (store/sources.py) an MLflow pytorch-flavor model

The keys every source takes (the rest are the builder's keyword arguments, read as Python
literals: num_classes=10, image_size=32, patch_size=8):
    weights     a .safetensors file, or an MLflow artifact URI holding one (runs:/ID/w.safetensors),
                or `pretrained` (the library's default weights; a torchvision weights name such as
                IMAGENET1K_V2 also works); without it the network keeps its random initialisation,
                drawn with init_seed (default 0), so that an analysis of it can be repeated
    input_size  the side the network takes; crop_pct, the share of the resized image it keeps
    mean, std   the normalisation, one number or three joined by '/' (mean=0&std=1: [0, 1] as is)

The input is prepared as the library's evaluation transform prepares it: resized (bilinear,
antialiased) so the shorter side is input_size / crop_pct, centre-cropped to input_size,
normalised. What is declared comes from the keys above, else from the builder's own image-size
argument (image_size, img_size: crop_pct 1), else from the library's pretrained config
(torchvision's weights transforms, timm's pretrained_cfg), which exists even for random weights;
a network that declares neither size nor normalisation is refused, naming the keys to add.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
from urllib.parse import parse_qsl

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SCHEMES", "Source", "InputSpec", "parse_source", "library_weights", "build_network", "declared_input",
           "prepare_inputs"]

SCHEMES = ("torchvision", "timm", "python")
SOURCE_KEYS = ("weights", "init_seed", "input_size", "crop_pct", "mean", "std")
SIZE_KWARGS = ("image_size", "img_size")  # a builder's own image-size argument (torchvision's ViT, timm)


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed source string: where the network comes from, what it declares, its builder's kwargs."""

    text: str  # as given
    scheme: str  # torchvision, timm, python or models
    target: str  # the architecture, MODULE:CALLABLE, or the models:/ URI
    keys: dict[str, str]  # SOURCE_KEYS given
    kwargs: dict[str, object]  # for the builder

    @property
    def label(self) -> str:
        """A built network's short name for runs, plots and artifact folders: 'torchvision.resnet18'
        (a models:/ source is named by its registered version instead)."""
        return f"{self.scheme}.{self.target.split(':')[-1]}"


def parse_source(text: str) -> Source:
    """'torchvision:vit_b_16?image_size=32&mean=0.5&std=0.5' -> Source; bad keys are refused."""
    head, _, query = text.strip().partition("?")
    scheme, _, target = head.partition(":")
    if scheme == "models":
        target = head
    elif scheme not in SCHEMES or not target:
        raise ValueError(f"model {text!r} is not a registry URI or a source this tool reads; write models:/NAME/VERSION, "
                         "models:/NAME@ALIAS, torchvision:ARCH, timm:ARCH or python:MODULE:CALLABLE (each may end in "
                         "?KEY=VALUE&...)")
    if scheme == "python" and target.count(":") != 1:
        raise ValueError(f"model {text!r}: name the builder as python:MODULE:CALLABLE, e.g. python:mypkg.nets:build_vit")
    keys, kwargs = {}, {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key in SOURCE_KEYS:
            keys[key] = value
        elif scheme == "models":
            raise ValueError(f"model {text!r}: {key!r} is not a key of a models:/ source; use {', '.join(SOURCE_KEYS[1:])}")
        else:
            kwargs[key] = _literal(value)
    return Source(text.strip(), scheme, target, keys, kwargs)


def _literal(value: str) -> object:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value  # a plain word: a string argument


def build_network(source: Source) -> nn.Module:
    """The network a torchvision, timm or python source names, freshly built with the random
    generator seeded by init_seed (weights: see store/sources.py, except `pretrained`, which the
    library loads itself)."""
    seed = _positive_int(source.keys.get("init_seed", 0), "init_seed", source, minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(source)


def _build(source: Source) -> nn.Module:
    pretrained = library_weights(source)
    if source.scheme == "torchvision":
        import torchvision

        def builder(**kwargs):
            weights = None
            if pretrained:
                enum = torchvision.models.get_model_weights(source.target)
                weights = enum.DEFAULT if source.keys["weights"] == "pretrained" else enum[source.keys["weights"]]
            return torchvision.models.get_model(source.target, weights=weights, **kwargs)
    elif source.scheme == "timm":
        timm = _import("timm", source)

        def builder(**kwargs):
            return timm.create_model(source.target, pretrained=pretrained, **kwargs)
    else:
        module_name, _, attr = source.target.partition(":")
        builder = getattr(_import(module_name, source), attr, None)
        if not callable(builder):
            raise ValueError(f"model {source.text!r}: {module_name} has no callable {attr!r}")
    try:
        network = builder(**source.kwargs)
    except (TypeError, KeyError, ValueError, RuntimeError) as err:  # an unknown architecture, weights name or argument
        raise ValueError(f"model {source.text!r} cannot be built: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}") from None
    if not isinstance(network, nn.Module):
        raise ValueError(f"model {source.text!r}: {source.target} returned {type(network).__name__}, not a torch.nn.Module")
    return network


def library_weights(source: Source) -> bool:
    """Whether the source's weights are the library's own: `pretrained`, or a torchvision weights name."""
    value = source.keys.get("weights", "")
    return value == "pretrained" or (source.scheme == "torchvision" and value.isupper() and not {"/", "."} & set(value))


def _import(name: str, source: Source):
    try:
        return importlib.import_module(name)
    except ImportError as err:
        fix = "pip install timm" if name == "timm" else "install it or add its folder to PYTHONPATH"
        raise ValueError(f"model {source.text!r}: cannot import {name} ({err}); {fix}") from None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a network takes: square images of `size`, cropped from `size / crop_pct`, normalised."""

    size: int
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    origin: str  # where it was read: params, the builder's arguments, the library's config

    def fed(self) -> dict[str, str]:
        """How the images are prepared: what the network's outputs on them depend on."""
        return {"input_size": str(self.size), "crop_pct": f"{self.crop_pct:g}", "mean": "/".join(f"{v:g}" for v in self.mean),
                "std": "/".join(f"{v:g}" for v in self.std)}

    def params(self) -> dict[str, str]:
        """As logged with the analysis: how the images are prepared, and where that was declared."""
        return {**self.fed(), "input_declared_by": self.origin}


def declared_input(source: Source, network: nn.Module, exported_size: int | None = None) -> InputSpec:
    """The input `network` declares: the source's keys first, then an exported graph's fixed size
    or the builder's image-size argument, then the library's pretrained config."""
    library = _library_config(source, network) or {}
    builder_size = next((source.kwargs[k] for k in SIZE_KWARGS if k in source.kwargs), None)
    size, size_from = next(((v, o) for v, o in ((source.keys.get("input_size"), "params"),
                                                 (exported_size, "the exported graph"),
                                                 (builder_size, "the builder's arguments"),
                                                 (library.get("size"), library.get("origin"))) if v is not None), (None, ""))
    crop = source.keys.get("crop_pct", library.get("crop_pct", 1.0) if size_from == library.get("origin") else 1.0)
    mean, std = source.keys.get("mean", library.get("mean")), source.keys.get("std", library.get("std"))
    if size is None or mean is None or std is None:
        missing = [k for k, v in (("input_size", size), ("mean", mean), ("std", std)) if v is None]
        raise ValueError(f"model {source.text!r} declares no {' or '.join(missing)}; add them to it, e.g. "
                         f"{source.text.split('?')[0]}?input_size=224&mean=0.485/0.456/0.406&std=0.229/0.224/0.225 "
                         "(mean=0&std=1 feeds images in [0, 1] as they are)")
    norm_from = "params" if "mean" in source.keys and "std" in source.keys else library["origin"]
    return InputSpec(_positive_int(size, "input_size", source), _fraction(crop, source), _channels(mean, "mean", source),
                     _channels(std, "std", source), f"size: {size_from}; normalisation: {norm_from}")


def _library_config(source: Source, network: nn.Module) -> dict | None:
    """Size, crop and normalisation from the library's pretrained config, where it has one."""
    cfg = getattr(network, "pretrained_cfg", None)  # timm, for random weights too
    if isinstance(cfg, dict) and "mean" in cfg and "input_size" in cfg:
        return {"size": cfg["input_size"][-1], "crop_pct": cfg.get("crop_pct", 1.0), "mean": tuple(cfg["mean"]),
                "std": tuple(cfg["std"]), "origin": "timm's pretrained_cfg"}
    if source.scheme == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(source.target).DEFAULT
        except (ValueError, KeyError, AttributeError):
            return None
        t = weights.transforms()
        if not hasattr(t, "crop_size"):
            return None
        return {"size": t.crop_size[0], "crop_pct": t.crop_size[0] / t.resize_size[0], "mean": tuple(t.mean),
                "std": tuple(t.std), "origin": f"torchvision's {weights}"}
    return None


def _positive_int(value: object, key: str, source: Source, minimum: int = 1) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ValueError(f"model {source.text!r}: {key}={value!r} must be an integer >= {minimum}, such as "
                         f"{224 if minimum else 0}")
    return number


def _fraction(value: object, source: Source) -> float:
    try:
        number = float(str(value))
    except ValueError:
        number = 0.0
    if not 0 < number <= 1:
        raise ValueError(f"model {source.text!r}: crop_pct={value!r} must be in (0, 1], e.g. 0.875")
    return number


def _channels(value: object, key: str, source: Source) -> tuple[float, float, float]:
    parts = [value] if isinstance(value, (int, float)) else list(value) if isinstance(value, tuple) else str(value).split("/")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers *= 3
    if len(numbers) != 3 or (key == "std" and min(numbers) <= 0):
        raise ValueError(f"model {source.text!r}: {key}={value!r} must be one number or three joined by '/' "
                         f"(e.g. {'0.229/0.224/0.225' if key == 'std' else '0.485/0.456/0.406'}){'; all positive' if key == 'std' else ''}")
    return (numbers[0], numbers[1], numbers[2])


def prepare_inputs(network: nn.Module, spec: InputSpec) -> nn.Module:
    """Make `network` prepare what it is given (floats in [0, 1], any size, as nets.forward feeds
    every model) the way `spec` declares, in a forward pre-hook: its module names stay its own."""

    def prepare(_module, args):
        x = args[0]
        short = min(x.shape[-2:])
        resize = round(spec.size / spec.crop_pct)
        if short != resize:
            h, w = (round(d * resize / short) for d in x.shape[-2:])
            x = F.interpolate(x, size=(max(h, spec.size), max(w, spec.size)), mode="bilinear", antialias=True,
                              align_corners=False)
        top, left = (x.shape[-2] - spec.size) // 2, (x.shape[-1] - spec.size) // 2
        x = x[..., top:top + spec.size, left:left + spec.size]
        mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x - mean) / std, *args[1:])

    network.register_forward_pre_hook(prepare)
    return network
