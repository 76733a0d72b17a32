"""Trained models in the MLflow Model Registry: a JSON config and safetensors weights, no pickle.

A registered version is an MLflow 3 logged model holding two files:
    config.json        {"format": 1, "model": ModelConfig fields, "training": provenance}
    model.safetensors  the state dict (parameters and BN buffers)
Loading rebuilds the network from the config and loads the weights into it, so nothing is
unpickled (it works with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false) and forward hooks fire,
unlike MLflow's default pt2 format, which returns a graph whose submodules never run.

Naming: one registered model per architecture and dataset ("cifar10-resnet20-w1"); seeds and data
fractions are versions of it, told apart by version tags, and the alias `newest` follows the
newest version. Every version is tagged so that the registry can be searched by
`tags.depth`, `tags.width`, `tags.seed`, `tags.data_fraction`, `tags.dataset`, ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .models import ModelConfig, ResNet, build_model
from .queries import search_versions

FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NEWEST_ALIAS = "newest"
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+|latest)|@(?P<alias>[\w-]+))$")


def registered_name(dataset: str, depth: int, width: float) -> str:
    return f"{dataset}-resnet{depth}-w{width:g}"


@dataclasses.dataclass
class LoadedModel:
    model: ResNet
    config: ModelConfig
    uri: str  # models:/NAME/VERSION, the version resolved
    name: str
    version: str
    tags: dict[str, str]
    run_id: str | None  # the training run
    training: dict  # provenance recorded at training time

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.version}"


def register(
    model: torch.nn.Module,
    config: ModelConfig,
    name: str,
    run_id: str,
    tags: dict[str, str],
    training: dict,
) -> ModelVersion:
    """Log the model's config and weights as an MLflow logged model and register it under `name`.

    Idempotent per `tags["lineage"]`: if a version with the same lineage already exists (a run
    killed after registering, then resumed), that version is returned and nothing is added.
    """
    client = MlflowClient()
    existing = find_versions(name, {"lineage": tags["lineage"]}) if "lineage" in tags else []
    if existing:
        return existing[0]
    with tempfile.TemporaryDirectory() as tmp:
        write_model_files(Path(tmp), model, config, training)
        logged = mlflow.initialize_logged_model(name="resnet", source_run_id=run_id, tags={"registered_name": name})
        client.log_model_artifacts(logged.model_id, tmp)
        mlflow.finalize_logged_model(logged.model_id, "READY")
    version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=tags)
    client.set_registered_model_alias(name, NEWEST_ALIAS, version.version)
    return version


def write_model_files(directory: Path, model: torch.nn.Module, config: ModelConfig, training: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    with open(directory / CONFIG_FILE, "w") as f:
        json.dump({"format": FORMAT, "model": config.to_dict(), "training": training}, f, indent=2)


def find_versions(name: str | None = None, tags: dict[str, str] | None = None) -> list[ModelVersion]:
    """Registered versions matching a name and exact tag values, newest first."""
    clauses = [f"name = '{name}'"] if name else []
    clauses += [f"tags.{k} = '{v}'" for k, v in (tags or {}).items()]
    return search_versions(" and ".join(clauses))


def split_uris(text: str) -> list[str]:
    """'models:/a/1, models:/b@newest' -> ['models:/a/1', 'models:/b@newest']."""
    return [u.strip() for u in text.split(",") if u.strip()]


def uris_matching(filter_string: str, parameter: str) -> list[str]:
    """models:/NAME/VERSION of every version a registry filter matches, newest first; an empty
    match is an error naming the `parameter` that held the filter."""
    found = search_versions(filter_string)
    if not found:
        raise ValueError(f"{parameter}={filter_string!r} matches no registered model version; check the filter in the MLflow UI")
    return [f"models:/{v.name}/{v.version}" for v in found]


def resolve_version(uri: str) -> ModelVersion:
    """models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS to a registered version."""
    match = MODEL_URI.match(uri.strip())
    if not match:
        raise ValueError(f"model {uri!r} is not a registry URI; write models:/NAME/VERSION or models:/NAME@ALIAS")
    name, version, alias = match["name"], match["version"], match["alias"]
    client = MlflowClient()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version == "latest":
            versions = find_versions(name)
            if not versions:
                raise ValueError(f"model {uri!r}: registered model {name!r} has no versions")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version(name, version)
    except MlflowException as err:
        raise ValueError(f"model {uri!r} is not in the registry ({err.message.splitlines()[0]}); list models with `mlflow models` or the UI") from None


def load_model(uri: str, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild a registered model from its config and safetensors weights, in eval mode."""
    version = resolve_version(uri)
    resolved = f"models:/{version.name}/{version.version}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolved))
    config, training, model = read_model_files(local, resolved)
    return LoadedModel(
        model=model.to(device).eval(),
        config=config,
        uri=resolved,
        name=version.name,
        version=str(version.version),
        tags=dict(version.tags),
        run_id=version.run_id,
        training=training,
    )


def read_model_files(directory: Path, what: str) -> tuple[ModelConfig, dict, ResNet]:
    """Validate and load config.json and model.safetensors; errors name `what` and the problem."""
    try:
        with open(directory / CONFIG_FILE) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        config = ModelConfig.from_dict(meta["model"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{what}: {CONFIG_FILE} is missing or invalid ({err}); re-register the model with `train`") from None
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{what}: {WEIGHTS_FILE} is missing or corrupt ({err}); re-register the model with `train`") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{what}: weights hold NaN or infinite values in {', '.join(bad[:3])}; the model cannot be analysed")
    model = build_model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(f"{what}: weights do not match the config {config} ({first})") from None
    return config, meta.get("training", {}), model


def tag_value(value: float) -> str:
    """Tags are strings; keep numbers short and parseable."""
    return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)
