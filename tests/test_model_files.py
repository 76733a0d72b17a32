import json

import mlflow
import pytest
import torch
from safetensors.torch import save_file

from analysis import registry
from analysis.store import contract, lookup, model_files
from analysis.nets import ModelConfig, build_model


def register_tiny(seed: int = 0, lineage: str = "a") -> tuple[torch.nn.Module, str]:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(8, 0.25)).eval()
    with mlflow.start_run() as run:
        version = model_files.register(model, model.config, "cifar10-resnet8-w0.25", run.info.run_id,
                                    {"seed": str(seed), "lineage": lineage}, {"dataset": "cifar10"})
    return model, str(version.version)


def test_loads_back_by_version_alias_and_latest_with_identical_logits(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model, version = register_tiny()
    x = torch.rand(5, 3, 32, 32)
    for uri in (f"models:/cifar10-resnet8-w0.25/{version}", "models:/cifar10-resnet8-w0.25@newest", "models:/cifar10-resnet8-w0.25/latest"):
        loaded = registry.load_model(uri)
        assert loaded.version == version and loaded.tags["seed"] == "0"
        assert torch.equal(loaded.model(x), model(x))
        fired = []
        loaded.model.get_submodule("stage2.block1.add").register_forward_hook(lambda *a: fired.append(1))
        loaded.model(x)
        assert fired == [1]  # a real module tree, not an exported graph


def test_alias_follows_the_newest_version_and_lineage_is_registered_once(store):
    register_tiny(0, "a")
    register_tiny(1, "b")
    _, again = register_tiny(1, "b")  # a resumed run re-registering its lineage
    versions = lookup.find_versions("cifar10-resnet8-w0.25")
    assert sorted(str(v.version) for v in versions) == ["1", "2"] and again == "2"
    assert registry.load_model("models:/cifar10-resnet8-w0.25@newest").tags["seed"] == "1"


@pytest.mark.parametrize("uri,fragment", [
    ("cifar10-resnet8", "not a registry URI"),
    ("models:/cifar10-resnet8-w0.25", "not a registry URI"),
    ("models:/no-such-model/1", "not in the registry"),
    ("models:/no-such-model@newest", "not in the registry"),
])
def test_bad_uris_are_named(store, uri, fragment):
    with pytest.raises(ValueError, match=fragment):
        registry.load_model(uri)


@pytest.fixture
def model_dir(tmp_path):
    model = build_model(ModelConfig(8, 0.25))
    model_files.write_model_files(tmp_path, model, model.config, {})
    return tmp_path


def test_truncated_weights_are_refused(model_dir):
    data = (model_dir / contract.MODEL_WEIGHTS_FILE).read_bytes()
    (model_dir / contract.MODEL_WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        model_files.read_model_files(model_dir, "models:/x/1")


def test_config_that_does_not_match_weights_is_refused(model_dir):
    meta = json.loads((model_dir / contract.MODEL_CONFIG_FILE).read_text())
    meta["model"]["width"] = 0.5
    (model_dir / contract.MODEL_CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match the config"):
        model_files.read_model_files(model_dir, "models:/x/1")


def test_nan_weights_are_refused(model_dir):
    state = build_model(ModelConfig(8, 0.25)).state_dict()
    state["logits.weight"][0, 0] = float("nan")
    save_file({k: v.contiguous() for k, v in state.items()}, str(model_dir / contract.MODEL_WEIGHTS_FILE))
    with pytest.raises(ValueError, match="NaN"):
        model_files.read_model_files(model_dir, "models:/x/1")


def test_a_planted_pickle_is_never_loaded(model_dir, tmp_path):
    # If anything unpickled this file, it would create the marker.
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Payload()}, model_dir / "model.pt")
    (model_dir / "data.pkl").write_bytes((model_dir / "model.pt").read_bytes())
    model_files.read_model_files(model_dir, "models:/x/1")
    assert not marker.exists()
