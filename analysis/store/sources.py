"""Every model `analyze` and `predictions` read, from its source string (nets/library.py gives the grammar):

- models:/NAME/VERSION of this project: rebuilt from its config and safetensors (model_files.py);
- models:/NAME/VERSION logged with MLflow's pytorch flavor:
  - pt2 (MLflow 3's default, torch.export): loaded with torch.export.load and unflattened
    (torch.export.unflatten), which rebuilds the module tree and calls each submodule, so its
    layers are reached by their original names; loaded as MLflow loads it (`.module()`), it is one
    flat graph whose submodules hold parameters but never run, and no hook would fire. Its input
    size is the one it was exported at (its signature);
  - pickle: unpickling runs code from the file, so it is loaded only where MLflow allows pickle
    deserialization (MLFLOW_ALLOW_PICKLE_DESERIALIZATION, true unless set to false) and otherwise
    refused in one line saying how to allow it;
- torchvision:ARCH, timm:ARCH, python:MODULE:CALLABLE, with weights from a safetensors file or
  MLflow artifact, or the library's pretrained weights.
An outside model's layers are found by running it on two images of its declared input
(nets/discover.py), and it prepares its own input (nets/library.prepare_inputs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import mlflow
import torch
from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from torch import nn

from ..nets.discover import run_layers
from ..nets.library import Source, build_network, declared_input, library_weights, parse_source, prepare_inputs
from .lookup import logged_model_id, resolve_version
from .model_files import LoadedModel, TrainedData, download_version, finite_weights, load_version, project_files, trained_data

__all__ = ["load_source", "load_sources", "check_dataset", "PICKLE_ENV"]

PICKLE_ENV = MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name
PT2_FILE = "model.pt2"
ARTIFACT_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def load_source(text: str, device: torch.device | str = "cpu") -> LoadedModel:
    """The model a source string names, on `device` in eval mode."""
    source = parse_source(text)
    if source.scheme == "models":
        version = resolve_version(source.target)
        local = download_version(version)
        if project_files(local) is not None:
            if source.keys:
                raise ValueError(f"model {text!r}: a version of this project declares its own input; drop "
                                 f"?{'&'.join(source.keys)}")
            return load_version(version, local, device)
        network, exported = _mlflow_pytorch(local, source)
        loaded = LoadedModel(model=network, config=None, uri=f"models:/{version.name}/{version.version}", name=version.name,
                             version=str(version.version), tags=dict(version.tags), run_id=version.run_id, training={},
                             model_id=logged_model_id(version))
    else:
        network, exported = build_network(source), None
        if "weights" in source.keys and not library_weights(source):
            _load_weights(network, source)
        loaded = LoadedModel(model=network, config=None, uri=source.text, name=source.label, version="", tags={},
                             run_id=None, training={})
    spec = declared_input(source, network, exported)
    if exported and spec.size != exported:
        raise ValueError(f"model {text!r} was exported for {exported}x{exported} images; drop input_size or set it to {exported}")
    prepare_inputs(network, spec)
    network.to(device).eval()
    try:
        loaded.layers = run_layers(network, torch.zeros(2, 3, spec.size, spec.size, dtype=torch.uint8))
    except (RuntimeError, TypeError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"model {text!r}: a forward pass of two {spec.size}x{spec.size} images failed ({first}); "
                         "check its input_size, and that it takes a batch of images (N, 3, H, W)") from None
    loaded.source, loaded.input = source.text, spec
    return loaded


def load_sources(texts: Sequence[str], device: torch.device | str = "cpu") -> list[LoadedModel]:
    """Every model the source strings name; where labels repeat (one architecture, two weights
    files) they are numbered, since each model's runs and artifact folders are named by its label."""
    seen: dict[str, int] = {}
    out = []
    for m in (load_source(text, device) for text in texts):
        seen[m.label] = seen.get(m.label, 0) + 1
        out.append(dataclasses.replace(m, name=f"{m.name}-{seen[m.label]}") if seen[m.label] > 1 else m)
    return out


def check_dataset(loaded: Sequence[LoadedModel], requested: str = "") -> TrainedData:
    """The one dataset, image size and pipeline all of this project's `loaded` models were trained
    on (the dataset `requested`, if given); models from outside the project record none, and are
    fed it as they declare their input. Without any of this project's models, the dataset must be
    `requested`, and is read as stored."""
    ours = [m for m in loaded if m.config is not None]
    if not ours:
        if not requested:
            raise ValueError("none of the models records the dataset it was trained on; name the images to read "
                             "with -P dataset=cifar10 (or another dataset, with -P data_dir=...)")
        return TrainedData(requested, 0, requested == "imagenet")
    trained = trained_data([m.tags for m in ours])
    if requested and requested != trained.dataset:
        raise ValueError(f"dataset={requested!r} but the models were trained on {trained.dataset!r}; leave dataset empty "
                         "or pick matching models")
    if {m.config.num_classes for m in ours} != {ours[0].config.num_classes}:
        raise ValueError("the models have different numbers of classes; analyse them separately")
    return trained


def _mlflow_pytorch(local: Path, source: Source) -> tuple[nn.Module, int | None]:
    """A registered MLflow pytorch-flavor model and, for pt2, the image size it was exported at."""
    model = Model.load(str(local))
    flavor = model.flavors.get("pytorch")
    if flavor is None:
        raise ValueError(f"model {source.text!r} is neither one of this project's versions nor an MLflow pytorch-flavor "
                         f"model (its flavors: {', '.join(model.flavors)}); log it with mlflow.pytorch.log_model")
    data = local / flavor.get("model_data", "data")
    if (data / PT2_FILE).exists():
        if not MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get():
            mlflow.pytorch.load_model(str(local))  # MLflow's own check that the archive holds no pickle
        program = torch.export.load(str(data / PT2_FILE))
        return torch.export.unflatten(program), _exported_size(model, source)
    if not MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get():
        raise ValueError(f"model {source.text!r} is saved in MLflow's pickle format, and loading it runs code from the file; "
                         f"MLflow forbids that here ({PICKLE_ENV}=false): set {PICKLE_ENV}=true if you trust it, or re-log it "
                         "with mlflow.pytorch.log_model(..., serialization_format='pt2')")
    return mlflow.pytorch.load_model(str(local), map_location="cpu"), None


def _exported_size(model: Model, source: Source) -> int | None:
    """The side of the square images a pt2 model was exported for, from its input signature."""
    inputs = model.signature.inputs if model.signature is not None else None
    shape = inputs.inputs[0].shape if inputs is not None and inputs.is_tensor_spec() else None
    if shape is None or len(shape) != 4 or shape[2] != shape[3] or shape[2] < 1:
        raise ValueError(f"model {source.text!r}: its signature does not declare square images (N, 3, H, H) "
                         f"(found {shape}); re-log it with an input_example of such images")
    return int(shape[2])


def _load_weights(network: nn.Module, source: Source) -> None:
    """Load the safetensors `weights` of a source (a path, or an MLflow artifact URI) into `network`."""
    value = source.keys["weights"]
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=value)) if value.startswith(ARTIFACT_SCHEMES) \
            else Path(value).expanduser()
    except (MlflowException, OSError) as err:
        raise ValueError(f"model {source.text!r}: weights={value!r} cannot be downloaded ({str(err).splitlines()[0]})") from None
    if local.is_dir():
        found = sorted(local.rglob("*.safetensors"))
        if len(found) != 1:
            raise ValueError(f"model {source.text!r}: weights={value!r} holds {len(found)} .safetensors files; name one")
        local = found[0]
    if not local.is_file():
        raise ValueError(f"model {source.text!r}: weights={value!r} is not a file; give a .safetensors path or artifact URI")
    state = finite_weights(local, f"model {source.text!r}")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split("\n\t")[1:2]) or str(err).splitlines()[0]
        raise ValueError(f"model {source.text!r}: {local.name} does not fit this network ({detail.strip()}); "
                         "check the architecture and its arguments (num_classes, ...)") from None
