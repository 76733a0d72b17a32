import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import save_file

from analysis import registry
from analysis.store import contract, lookup, model_files
from analysis.nets import ModelConfig, build_model, predict_logits
from tests.fake_store import EXAMPLE


def register_tiny(seed: int = 0, lineage: str = "a") -> tuple[torch.nn.Module, str]:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(8, 0.25)).eval()
    with mlflow.start_run():
        version = model_files.register(model, model.config, "cifar10-resnet8-w0.25", {"seed": str(seed), "lineage": lineage},
                                       {"dataset": "cifar10"}, example=EXAMPLE, params={"depth": 8}, metrics={"test_accuracy": 0.25})
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


def test_model_files_are_readable_by_every_worker(model_dir):
    assert {oct((model_dir / f).stat().st_mode & 0o777) for f in (contract.MODEL_CONFIG_FILE, contract.MODEL_WEIGHTS_FILE)} == {"0o644"}


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


@pytest.mark.parametrize("field,value,fragment", [
    ("width", 9999, "stem.conv.weight: the config needs (159984, 3, 3, 3)"),  # 921 GB of weights if it were built
    ("num_classes", 10**9, "logits.weight: the config needs (1000000000, 16)"),
    ("depth", 6000002, "has 3000000 residual blocks, but model.safetensors holds only 56 tensors"),
])
def test_a_tampered_config_is_refused_from_the_weights_header_before_anything_is_allocated(model_dir, field, value, fragment):
    import time

    meta = json.loads((model_dir / contract.MODEL_CONFIG_FILE).read_text())
    meta["model"][field] = value
    (model_dir / contract.MODEL_CONFIG_FILE).write_text(json.dumps(meta))
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        model_files.read_model_files(model_dir, "models:/x/1")
    assert time.perf_counter() - start < 5  # the depth case built for a minute before
    message = str(err.value)
    assert fragment in message and "\n" not in message and "re-register the model" in message


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


def test_a_version_is_an_mlflow_model_that_pyfunc_serves_without_pickle(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    _, version = register_tiny()
    uri = f"models:/cifar10-resnet8-w0.25/{version}"
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    served = mlflow.pyfunc.load_model(uri)
    logits = served.predict(images.numpy())
    assert logits.dtype == np.float32 and logits.shape == (6, 10)
    expected = predict_logits(registry.load_model(uri).model, images).numpy()
    assert np.array_equal(logits, expected)  # the same network as the project's own loader

    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs is None  # checked by analysis.store.payload instead: MLflow would cast a payload to it
    (outputs,) = info.signature.outputs.inputs
    assert outputs.type == np.dtype(np.float32) and outputs.shape == (-1, 10)
    assert registry.load_model(uri).training["input_shape"] == [3, 32, 32]
    logged = mlflow.get_logged_model(info.model_id)
    assert logged.name == "cifar10-resnet8-w0_25" and logged.params["depth"] == "8"
    assert {m.key: m.value for m in logged.metrics}["test_accuracy"] == 0.25
    assert logged.source_run_id == MlflowClient().get_model_version("cifar10-resnet8-w0.25", version).run_id
    assert np.array_equal(served.predict(images.numpy().astype(np.int64)), expected)  # what JSON integers parse to


IMAGES = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32)).astype(np.uint8)
IMAGES[0, 0, 0, :2] = 0, 255  # the full range, so that the refusals' ranges are known
WRONG_PAYLOADS = [  # (what was sent, a fragment of the one-line refusal)
    ("floats in [0, 1]", IMAGES / 255.0, "floating-point values in [0, 1] were sent (images scaled to [0, 1]?"),
    ("floats above 255", IMAGES * 2.0, "floating-point values in [0, 510] were sent"),
    ("negative integers", IMAGES.astype(np.int64) - 10, "integer values in [-10, 245] were sent, outside 0 to 255"),
    ("channels last", IMAGES.transpose(0, 2, 3, 1).copy(), "channels-last images (2, 32, 32, 3) were sent"),
    ("another size", IMAGES[:, :, :16, :16].copy(), "images of shape (2, 3, 16, 16) were sent"),
    ("one image without a batch", IMAGES[0], "an array of shape (3, 32, 32) was sent"),
    ("an empty batch", IMAGES[:0], "an empty batch was sent"),
]


@pytest.mark.parametrize("payload,fragment", [p[1:] for p in WRONG_PAYLOADS], ids=[p[0] for p in WRONG_PAYLOADS])
def test_pyfunc_refuses_a_wrong_payload_in_one_line_naming_what_it_expects(store, payload, fragment):
    from mlflow.exceptions import MlflowException

    _, version = register_tiny()
    served = mlflow.pyfunc.load_model(f"models:/cifar10-resnet8-w0.25/{version}")
    with pytest.raises(MlflowException) as err:
        served.predict(payload)
    message = err.value.message
    assert fragment in message and "expected uint8 images (N, 3, 32, 32)" in message
    assert "\n" not in message and len(message) < 300  # the payload is never echoed


def test_versions_registered_before_the_mlflow_model_layout_still_load(store, tmp_path):
    """Earlier releases logged the two files alone at the model's root, with no MLmodel."""
    model = build_model(ModelConfig(8, 0.25)).eval()
    model_files.write_model_files(tmp_path, model, model.config, {"dataset": "cifar10"})
    with mlflow.start_run() as run:
        logged = mlflow.initialize_logged_model(name="resnet", source_run_id=run.info.run_id)
        MlflowClient().log_model_artifacts(logged.model_id, str(tmp_path))
        mlflow.finalize_logged_model(logged.model_id, "READY")
    version = mlflow.register_model(f"models:/{logged.model_id}", "cifar10-resnet8-w0.25")
    loaded = registry.load_model(f"models:/cifar10-resnet8-w0.25/{version.version}")
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.model(x), model(x))


@pytest.mark.slow
def test_mlflow_models_predict_serves_a_version(store, tmp_path):
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    _, version = register_tiny()
    uri = f"models:/cifar10-resnet8-w0.25/{version}"
    images = np.random.default_rng(2).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    (tmp_path / "input.json").write_text(json.dumps({"inputs": images.tolist()}))
    proc = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m", uri, "-i", str(tmp_path / "input.json"),
                           "-t", "json", "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
                          env=subprocess_env(MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    predictions = np.array(json.loads((tmp_path / "out.json").read_text())["predictions"], dtype=np.float32)
    expected = predict_logits(registry.load_model(uri).model, torch.from_numpy(images)).numpy()
    assert np.allclose(predictions, expected, atol=1e-5)


@pytest.mark.slow
def test_the_server_answers_images_with_the_registry_models_logits_and_refuses_every_wrong_payload_with_a_400(store):
    import urllib.error
    import urllib.request

    from tests.conftest import serving

    _, version = register_tiny()
    uri = f"models:/cifar10-resnet8-w0.25/{version}"

    def command(port: int) -> list[str]:
        return ["-m", "mlflow", "models", "serve", "-m", uri, "-p", str(port), "-h", "127.0.0.1", "--env-manager", "local"]

    with serving(command, "/ping", MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false") as url:
        def post(payload) -> tuple[int, dict]:
            body = json.dumps({"inputs": np.asarray(payload).tolist()}).encode()
            request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    return answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        status, answer = post(IMAGES)
        expected = predict_logits(registry.load_model(uri).model, torch.from_numpy(IMAGES)).numpy()
        assert status == 200 and np.allclose(np.array(answer["predictions"], dtype=np.float32), expected, atol=1e-5)
        for what, payload, fragment in WRONG_PAYLOADS:
            status, answer = post(payload)
            assert 400 <= status < 500, what
            assert fragment in answer["message"] and "\n" not in answer["message"] and len(answer["message"]) < 300, what
