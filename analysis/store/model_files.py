"""Trained models as registry files: a JSON config and safetensors weights, never a pickle.

A registered version is an MLflow Model of the python_function flavor (served_model.py, logged
as "models from code"), with an output signature (float32 logits (N, classes); the input, uint8
images (N, 3, H, W), is checked by payload.py rather than declared, since MLflow would cast a
payload to it), an input example, the training's params and test metrics, and two artifacts
(contract.MODEL_CONFIG_FILE, contract.MODEL_WEIGHTS_FILE):
    config.json        {"format": 1, "model": ModelConfig fields, "training": provenance}
    model.safetensors  the state dict (parameters and BN buffers)
The project's own code travels with it, so `mlflow models serve` needs only torch. Loading here
rebuilds the network from the config and loads the weights into it, so nothing is unpickled (it
works with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false) and forward hooks fire, unlike MLflow's
default pt2 format, which returns a graph whose submodules never run. Versions registered before
(the two files alone, at the model's root) still load here. Every version is tagged so that the
registry can be searched (store/lookup.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from torch import nn

from ..data import ImageData, load_dataset
from ..nets import ModelConfig, build_model, family, layer_names
from ..nets.discover import Layers
from ..nets.library import InputSpec
from .contract import LINEAGE, MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE, NEWEST_ALIAS, SNAPSHOT_DIR, model_uri
from .lookup import find_versions, logged_model_id, resolve_version
from .tracking import store_lock
from .versions import VersionInfo

__all__ = ["LoadedModel", "TrainedData", "trained_data", "register", "load_model", "write_model_files", "read_model_files", "build_with_weights", "finite_weights",
           "download_version", "project_files", "load_version",
           "training_snapshots"]

FORMAT = 1


@dataclasses.dataclass(frozen=True)
class TrainedData:
    """How models' images are read to analyse or score them: as they were trained."""

    dataset: str
    image_size: int  # 0: as stored
    streamed: bool  # the family's folder stream (evaluation crops), else the in-memory tensors

    def load(self, data_dir: str = "") -> ImageData:
        """The dataset as these models were trained on it (`data_dir`: default, $WIDEDEEP_DATA_DIR)."""
        return load_dataset(self.dataset, data_dir or None, self.image_size, stream=self.streamed)


def trained_data(versions: list[dict[str, str]]) -> TrainedData:
    """The one dataset, image size and pipeline that models (their version tags) were trained on;
    models trained on different ones are refused, since they cannot be compared on one set."""
    infos = [VersionInfo.from_tags(tags) for tags in versions]
    seen = {TrainedData(v.dataset or "", v.image_size, family(v.arch).streamed) for v in infos}
    if len(seen) > 1:
        described = sorted(f"{d.dataset} at {d.image_size or 'stored size'}{' streamed' if d.streamed else ''}" for d in seen)
        raise ValueError(f"the models were trained on different datasets, image sizes or pipelines {described}; "
                         "analyse or compare them separately")
    return seen.pop()


@dataclasses.dataclass
class LoadedModel:
    """A network ready to analyse, and where it came from: one of this project's registered
    versions (`config` set), or a model from outside it (store/sources.py: `config` None, its
    layers found by running it, its declared input in `params`)."""

    model: nn.Module
    config: ModelConfig | None  # None: not one of this project's networks
    uri: str  # models:/NAME/VERSION with the version resolved, or the source string as given
    name: str
    version: str  # "" for a model that is not a registered version
    tags: dict[str, str]
    run_id: str | None  # the training run (the run that logged it, for an MLflow model)
    training: dict  # provenance recorded at training time
    model_id: str | None = None  # the LoggedModel the version was registered from (None: registered before)
    layers: Layers | None = None  # an outside model's layers, found by running it
    source: str = ""  # an outside model's source string, as given
    input: InputSpec | None = None  # an outside model's declared input

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.version}" if self.version else self.name

    @property
    def info(self) -> VersionInfo:
        """The version's tags, parsed."""
        return VersionInfo.from_tags(self.tags)

    @property
    def params(self) -> dict[str, str]:
        """An outside model's source and declared input, as logged; empty for this project's versions."""
        return {"source": self.source, **self.input.params()} if self.input is not None else {}

    @property
    def num_classes(self) -> int:
        return self.config.num_classes if self.config is not None else self.layers.outputs

    def layer_names(self, which: str = "all") -> list[str]:
        """The layers `which` names ("all", "blocks", or a comma list of name patterns)."""
        if self.config is not None:
            return layer_names(self.config, which)
        self.layers = self.layers.tapping(self.model, which)  # functional operations a pattern names are tapped first
        return self.layers.select(which)


SERVED_MODEL = Path(__file__).with_name("served_model.py")
PACKAGE = Path(__file__).parents[1]  # analysis/, shipped with every model as its code
REQUIREMENTS = ["torch", "numpy", "safetensors"]


def register(
    model: torch.nn.Module,
    config: ModelConfig,
    name: str,
    tags: dict[str, str],
    training: dict,
    example: torch.Tensor,
    params: dict | None = None,
    metrics: dict[str, float] | None = None,
    step: int = 0,
) -> ModelVersion:
    """Log the model as an MLflow Model in the active run and register it under `name`.

    `example`: a few uint8 images (N, 3, H, W), the input example; `params` and `metrics` are
    recorded on the logged model (the metrics also on the run, at `step`: MLflow keeps a model's
    metrics as run metrics that name the model). Idempotent per `tags["lineage"]`: if a version with the same
    lineage already exists (a run killed after registering, then resumed), that version is
    returned and nothing is added; the check and the registration happen under the store's lock
    (tracking.store_lock: an flock beside SQLite, an advisory lock on PostgreSQL), so two writers
    of one lineage cannot both add a version.
    """
    existing = find_versions(name, {LINEAGE: tags[LINEAGE]}) if LINEAGE in tags else []
    if existing:
        return existing[0]
    images = example.cpu().numpy()
    signature = ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, config.num_classes))]))
    with tempfile.TemporaryDirectory() as tmp:
        write_model_files(Path(tmp), model, config, {**training, "input_shape": list(images.shape[1:])})
        info = mlflow.pyfunc.log_model(
            name=name.replace(".", "_"),  # logged-model names may not hold dots
            python_model=str(SERVED_MODEL),
            artifacts={"config": str(Path(tmp) / MODEL_CONFIG_FILE), "weights": str(Path(tmp) / MODEL_WEIGHTS_FILE)},
            code_paths=[str(PACKAGE)],
            signature=signature,
            input_example=images,
            pip_requirements=REQUIREMENTS,
            params={k: str(v) for k, v in (params or {}).items()},
            tags={"registered_name": name},
        )
    if metrics:
        mlflow.log_metrics(metrics, step=step, model_id=info.model_id)
    with store_lock(mlflow.get_tracking_uri()):  # once per lineage, even for two writers on two machines
        existing = find_versions(name, {LINEAGE: tags[LINEAGE]}) if LINEAGE in tags else []
        if existing:
            return existing[0]
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    point_newest_alias(name)
    return version


def point_newest_alias(name: str, attempts: int = 5) -> None:
    """Point alias `newest` at the highest version of `name`. Trainings registering at once race
    on the alias row (PostgreSQL: a unique-key violation for the loser): every writer retries with
    the highest version it then sees, so all converge on the newest."""
    client = MlflowClient()
    for attempt in range(attempts):
        newest = max(int(v.version) for v in find_versions(name))
        try:
            client.set_registered_model_alias(name, NEWEST_ALIAS, str(newest))
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random() * 0.5 * 2**attempt)


def write_model_files(directory: Path, model: torch.nn.Module, config: ModelConfig, training: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / MODEL_WEIGHTS_FILE))
    with open(directory / MODEL_CONFIG_FILE, "w") as f:
        json.dump({"format": FORMAT, "model": config.to_dict(), "training": training}, f, indent=2)
    for file in (MODEL_WEIGHTS_FILE, MODEL_CONFIG_FILE):
        os.chmod(directory / file, 0o644)  # readable by every worker that shares the artifact store


def load_model(uri: str, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild a registered model from its config and safetensors weights, in eval mode."""
    version = resolve_version(uri)
    return load_version(version, download_version(version), device)


def download_version(version: ModelVersion) -> Path:
    """The local folder of a registered version's MLflow Model."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri(version.name, version.version)))


def project_files(local: Path) -> Path | None:
    """The folder of a downloaded version that holds this project's files: its artifacts/ (an
    MLflow Model) or, for versions registered before, its root; None when it holds neither."""
    return next((d for d in (local / "artifacts", local) if (d / MODEL_CONFIG_FILE).exists()), None)


def load_version(version: ModelVersion, local: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """One of this project's versions, downloaded to `local`, rebuilt in eval mode."""
    resolved = model_uri(version.name, version.version)
    config, training, model = read_model_files(project_files(local) or local, resolved)
    return LoadedModel(
        model=model.to(device).eval(),
        config=config,
        uri=resolved,
        name=version.name,
        version=str(version.version),
        tags=dict(version.tags),
        run_id=version.run_id,
        training=training,
        model_id=logged_model_id(version),
    )


def read_model_files(directory: Path, what: str) -> tuple[ModelConfig, dict, nn.Module]:
    """Validate and load config.json and model.safetensors; errors name `what` and the problem."""
    try:
        with open(directory / MODEL_CONFIG_FILE) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        config = ModelConfig.from_dict(meta["model"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{what}: {MODEL_CONFIG_FILE} is missing or invalid ({err}); re-register the model with `train`") from None
    return config, meta.get("training", {}), build_with_weights(config, directory / MODEL_WEIGHTS_FILE, what)


MAX_TENSORS_PER_BLOCK = 2  # every residual block holds at least two convolutions' weights


def build_with_weights(config: ModelConfig, weights: Path, what: str) -> nn.Module:
    """The network of `config` with the safetensors state dict at `weights`, checked: errors name
    `what` and the problem (a missing or corrupt file, NaN weights, a config mismatch). The config
    is checked against the file's header (every tensor's name, shape and dtype) on a network built
    on the meta device before anything is allocated, so a tampered config.json (width 9999,
    num_classes 1e9, depth 6,000,002) is refused in a line instead of asking for gigabytes: what
    is allocated is bounded by the weights file's own size."""
    header = _weights_header(weights, what)
    blocks = sum(config.stage_blocks)
    if blocks * MAX_TENSORS_PER_BLOCK > len(header):  # refused before even the meta network is built
        raise ValueError(f"{what}: the config {config} has {blocks} residual blocks, but {weights.name} holds only "
                         f"{len(header)} tensors; the config or the weights were altered: re-register the model with `train`")
    with torch.device("meta"):
        skeleton = build_model(config)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
    differ = sorted(set(expected) ^ set(header)) or [k for k in expected if expected[k] != header[k]]
    if differ:
        k = differ[0]
        found = f"{header[k][0]} {header[k][1]}" if k in header else "absent"
        wanted = f"{expected[k][0]} {expected[k][1]}" if k in expected else "absent"
        raise ValueError(f"{what}: weights do not match the config {config} ({k}: the config needs {wanted}, "
                         f"{weights.name} holds {found}; {len(differ)} tensor(s) differ); re-register the model with `train`")
    state = finite_weights(weights, what)
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    return model


def finite_weights(weights: Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict in a safetensors file, refused (naming `what`) if a weight is NaN or infinite."""
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{what}: {weights.name} is missing or corrupt ({err})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{what}: weights hold NaN or infinite values in {', '.join(bad[:3])}; the model cannot be analysed")
    return state


def _weights_header(weights: Path, what: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} of every tensor in a safetensors file, read from its header alone."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), _DTYPES.get(f.get_slice(k).get_dtype())) for k in f.keys()}
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{what}: {weights.name} is missing or corrupt ({err}); re-register the model with `train`") from None


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
           "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def training_snapshots(m: LoadedModel) -> list[tuple[int, str]]:
    """(epoch, artifact path in the training run) of every snapshot its training kept (train -P
    snapshot_every), in epoch order; refused, naming the fix, when it kept none."""
    found = []
    if m.run_id:
        try:
            entries = MlflowClient().list_artifacts(m.run_id, SNAPSHOT_DIR)
        except (MlflowException, OSError):
            entries = []
        found = sorted((int(Path(e.path).stem.split("-")[1]), e.path) for e in entries if e.path.endswith(".safetensors"))
    if not found:
        raise ValueError(f"{m.uri} has no training snapshots; train it with -P snapshot_every=K (e.g. 10) to analyse its history")
    return found
