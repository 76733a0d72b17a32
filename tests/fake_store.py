"""Small fake stores for tests: randomly initialised tiny models registered as `train` would
register them, and synthetic analysis runs as `analyze` logs them (no training, no analysis)."""

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from analysis.nets import ModelConfig, build_model, registered_name
from analysis.store import contract as c
from analysis.store import model_files


EXAMPLE = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def register_model(depth: int = 8, width: float = 0.25, seed: int = 0, dataset: str = "cifar10",
                   silenced: tuple[str, ...] = (), training: dict | None = None, **tags: str) -> ModelVersion:
    """A seeded random ResNet registered under its architecture's name, with the version tags
    `train` sets (overridable through `tags`). A training run is opened for it. The residual
    branches of the `silenced` blocks ('stage2.block3') are zeroed (their last BN's scale and
    shift), so those blocks pass their input on: a planted block of identical representations.
    `training`: provenance recorded in its config.json beside the dataset (e.g. epochs)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(depth, width))
    with torch.no_grad():
        for block in silenced:
            model.get_submodule(f"{block}.bn2").weight.zero_()
            model.get_submodule(f"{block}.bn2").bias.zero_()
    version_tags = {"dataset": dataset, "depth": str(depth), "width": f"{width:g}", "seed": str(seed),
                    "data_fraction": "1", "epochs": "1", c.TEST_ACCURACY: "0.1", c.TRAIN_ACCURACY: "0.1",
                    c.LINEAGE: f"{dataset}-{depth}-{width}-{seed}-{tags.get('data_fraction', '1')}", **tags}
    with mlflow.start_run():
        return model_files.register(model, model.config, registered_name(dataset, depth, width, "resnet"), version_tags,
                                    {"dataset": dataset, **(training or {})}, example=EXAMPLE)


def uri(version: ModelVersion) -> str:
    return c.model_uri(version.name, version.version)


# (depth, width, seed, fraction, block_largest_frac); None: an analysis without block metrics.
SYNTHETIC = [
    (8, 0.25, 0, 1.0, 0.10), (8, 0.25, 1, 1.0, 0.30),
    (8, 0.5, 0, 1.0, 0.40), (8, 0.5, 1, 1.0, None),
    (14, 0.25, 0, 0.25, 0.50), (14, 0.25, 1, 0.25, 0.70), (14, 0.25, 2, 0.25, 0.60),
]  # fmt: skip


def populate(synthetic=SYNTHETIC) -> None:
    """Registered tiny models with synthetic analysis runs as `analyze` logs them, one failed
    analysis, and an older analysis of one version (the newest must win)."""
    client = MlflowClient()
    for depth, width, seed, fraction, largest in synthetic:
        version = register_model(depth, width, seed, data_fraction=f"{fraction:g}", epochs="3", test_accuracy="0.5",
                                 train_accuracy="0.9")
        for attempt in ("old", "failed", "new"):
            with mlflow.start_run() as run:
                mlflow.set_tags({c.ANALYSIS_MODEL_URI: uri(version), c.MODEL_NAME: version.name,
                                 c.MODEL_VERSION: str(version.version),
                                 **{k: version.tags[k] for k in ("dataset", "depth", "width", "seed", "data_fraction")}})
                if attempt == "new":
                    mlflow.set_tag(c.ANALYSIS_NEWEST, "true")  # as analyze moves it
                if largest is not None:
                    value = largest if attempt == "new" else 0.99
                    mlflow.log_metrics({"block_largest_frac": value, "block_count": 1.0, "block_mean_cka": 0.95})
            if attempt == "failed":
                client.set_terminated(run.info.run_id, "FAILED")


def runs_of(kind: str, status: str | None = None) -> list:
    """Runs of one kind (contract.KINDS) in every experiment, optionally of one status."""
    where = f"tags.`{c.KIND}` = '{kind}'" + (f" and attributes.status = '{status}'" if status else "")
    return mlflow.search_runs(search_all_experiments=True, filter_string=where, output_format="list")
