"""The predictions stage end to end: files, metrics, and test logits cached on the versions."""

import pytest
from mlflow import MlflowClient

from analysis.store import contract as c
from entrypoints import predictions as pred_entry
from entrypoints.common import run_main
from tests.fake_store import register_model, runs_of


def test_predictions_entry_point_end_to_end_with_cached_logits(store):
    for width in (0.25, 0.5):
        for seed in (0, 1):
            register_model(8, width, seed)
    argv = ["--group_a", "name='cifar10-resnet8-w0.25'", "--group_b", "name='cifar10-resnet8-w0.5'", "--device", "cpu"]
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(argv))) == 0
    client = MlflowClient()
    first = runs_of("predictions")
    assert len(first) == 1
    files = {f.path for f in client.list_artifacts(first[0].info.run_id, c.PREDICTIONS_DIR)}
    assert {"predictions/per_class.csv", "predictions/per_example.png", "predictions/per_class.png", "predictions/agreement.png"} <= files
    assert len(client.list_artifacts(first[0].info.run_id, c.LOGITS_DIR)) == 4
    assert {"cross_vs_within_disagreement", "n_significant_classes", "disagreement_p_value"} <= set(first[0].data.metrics)
    tag = client.get_model_version("cifar10-resnet8-w0.5", "1").tags[c.test_logits_tag(first[0].data.tags[c.TEST_DIGEST])]
    assert tag.startswith(f"runs:/{first[0].info.run_id}/logits/")

    # A second comparison reuses every model's logits: it logs none of its own.
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(argv))) == 0
    runs = runs_of("predictions")
    second = next(r for r in runs if r.info.run_id != first[0].info.run_id)
    assert client.list_artifacts(second.info.run_id, c.LOGITS_DIR) == []
    assert second.data.metrics["cross_disagreement"] == first[0].data.metrics["cross_disagreement"]


def test_predictions_read_the_images_at_the_size_the_models_were_trained_at(store, tiny_data, capsys):
    import numpy as np
    import mlflow

    from analysis import registry
    from analysis.data import load_dataset
    from analysis.nets import predict_logits

    versions = [register_model(8, width, seed, image_size="40") for width in (0.25, 0.5) for seed in (0, 1)]
    a = versions[0]
    uris = [f"models:/{v.name}/{v.version}" for v in versions]
    argv = ["--group_a", ",".join(uris[:2]), "--group_b", ",".join(uris[2:]), "--device", "cpu", "--permutations", "99"]
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(argv))) == 0
    [run] = runs_of("predictions")
    cached = np.load(mlflow.artifacts.download_artifacts(
        artifact_uri=MlflowClient().get_model_version(a.name, a.version).tags[c.test_logits_tag(run.data.tags[c.TEST_DIGEST])]))
    at_40 = load_dataset("cifar10", tiny_data, image_size=40).test_x
    assert at_40.shape[2:] == (40, 40)
    np.testing.assert_allclose(cached, predict_logits(registry.load_model(uris[0]).model, at_40).numpy(), atol=1e-5)

    other = [register_model(8, 0.5, seed) for seed in (2, 3)]  # trained at the stored size
    capsys.readouterr()
    argv = ["--group_a", ",".join(uris[:2]), "--group_b", ",".join(f"models:/{v.name}/{v.version}" for v in other), "--device", "cpu"]
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(argv))) == 2
    assert "trained on different datasets, image sizes or pipelines" in capsys.readouterr().err


def test_another_test_folder_of_the_same_size_and_classes_is_scored_with_its_own_logits(store, tiny_data, tmp_path):
    import shutil

    import numpy as np
    from PIL import Image

    from analysis import registry
    from analysis.data import load_dataset
    from analysis.nets import predict_logits

    versions = [register_model(8, width, seed) for width in (0.25, 0.5) for seed in (0, 1)]
    uris = [f"models:/{v.name}/{v.version}" for v in versions]
    argv = ["--group_a", ",".join(uris[:2]), "--group_b", ",".join(uris[2:]), "--device", "cpu", "--permutations", "99"]
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(argv))) == 0

    # The same file names, classes and count; other pixels (every test image upside down).
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    for path in (other / "test").rglob("*.jpg"):
        with Image.open(path) as im:
            flipped = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        flipped.save(path)
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args([*argv, "--data_dir", str(other)]))) == 0

    first, second = sorted(runs_of("predictions"), key=lambda r: r.info.start_time)
    assert first.data.tags[c.TEST_DIGEST] != second.data.tags[c.TEST_DIGEST]
    assert len(MlflowClient().list_artifacts(second.info.run_id, c.LOGITS_DIR)) == 4  # recomputed, not reused
    test = load_dataset("cifar10", str(other))
    expected = np.mean([(predict_logits(registry.load_model(u).model, test.test_x).argmax(1) == test.test_y).float().mean().item()
                        for u in uris[:2]])
    assert second.data.metrics["accuracy_a_mean"] == pytest.approx(expected, abs=1e-6)
    tags = MlflowClient().get_model_version(versions[0].name, versions[0].version).tags
    assert {c.test_logits_tag(r.data.tags[c.TEST_DIGEST]) for r in (first, second)} <= set(tags)  # both caches kept


TINY = "python:tests.test_sources:TinyNet?input_size=32&mean=0.5&std=0.25"


def test_this_projects_versions_against_outside_models_with_each_registered_versions_logits_cached(store, tiny_data, capsys):
    """Group A: two of this project's versions; group B: a registered pt2 model fed 8x8 images and a
    network built by a builder of the researcher's own. The built one is run every time; the
    registered ones are cached, the outside one under a tag keyed by the input it was fed."""
    import mlflow
    import numpy as np
    import torch
    from torchvision.transforms.v2 import functional as TF

    from analysis.data import load_dataset
    from tests.test_sources import TinyNet, log_tiny

    ours = [register_model(8, 0.25, seed) for seed in (0, 1)]
    exported = log_tiny("tiny-pt2", "pt2")  # exported at 8x8
    group_b = f"models:/tiny-pt2/1?mean=0&std=1,{TINY}&init_seed=3"
    argv = ["--group_a", "name='cifar10-resnet8-w0.25'", "--group_b", group_b, "--device", "cpu", "--permutations", "99"]
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(argv))) == 0
    client = MlflowClient()
    [first] = runs_of("predictions")
    assert {f.path for f in client.list_artifacts(first.info.run_id, c.LOGITS_DIR)} == {
        "logits/cifar10-resnet8-w0.25-v1.npy", "logits/cifar10-resnet8-w0.25-v2.npy", "logits/tiny-pt2-v1.npy",
        "logits/python.TinyNet.npy"}

    # group B's logits from the two networks fed by hand: the pt2 one 8x8 (antialiased), the built one at 32
    test = load_dataset("cifar10", tiny_data)
    x = test.test_x.float() / 255
    torch.manual_seed(3)
    built = TinyNet().eval()
    with torch.no_grad():
        expected = {"tiny-pt2-v1": exported(TF.resize(x, [8], antialias=True)),
                    "python.TinyNet": built(TF.normalize(x, [0.5] * 3, [0.25] * 3))}
    for label, want in expected.items():
        got = np.load(mlflow.artifacts.download_artifacts(artifact_uri=c.logits_artifact(first.info.run_id, label)))
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    accuracy = np.mean([(want.argmax(1) == test.test_y).float().mean().item() for want in expected.values()])
    assert first.data.metrics["accuracy_b_mean"] == pytest.approx(accuracy, abs=1e-6)

    digest = first.data.tags[c.TEST_DIGEST]
    fed = {"input_size": "8", "crop_pct": "1", "mean": "0/0/0", "std": "1/1/1"}
    tags = client.get_model_version("tiny-pt2", "1").tags
    assert tags[c.test_logits_tag(digest, fed)] == c.logits_artifact(first.info.run_id, "tiny-pt2-v1")
    assert c.test_logits_tag(digest) not in tags  # keyed by its input too: another mean or std is another cache
    assert c.test_logits_tag(digest) in client.get_model_version(ours[0].name, ours[0].version).tags

    # Again: the registered versions' logits are reused, the built network's recomputed; the same result.
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(argv))) == 0
    second = next(r for r in runs_of("predictions") if r.info.run_id != first.info.run_id)
    assert [f.path for f in client.list_artifacts(second.info.run_id, c.LOGITS_DIR)] == ["logits/python.TinyNet.npy"]
    assert second.data.metrics == first.data.metrics

    # Outside models only: the dataset must be named; a model of other classes is refused.
    capsys.readouterr()
    only_outside = ["--group_a", f"models:/tiny-pt2/1?mean=0&std=1,{TINY}&init_seed=4", "--group_b",
                    f"{TINY}&init_seed=5,{TINY}&init_seed=6", "--device", "cpu"]
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(only_outside))) == 2
    assert "name the images to read with -P dataset=cifar10" in capsys.readouterr().err
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args([*only_outside, "--dataset", "cifar10",
                                                                   "--permutations", "9"]))) == 0
    last = max(runs_of("predictions"), key=lambda r: r.info.start_time)
    assert {f.path for f in client.list_artifacts(last.info.run_id, c.LOGITS_DIR)} == {
        "logits/python.TinyNet.npy", "logits/python.TinyNet-2.npy", "logits/python.TinyNet-3.npy"}  # the pt2 one: cached
    other_classes = ["--group_a", "name='cifar10-resnet8-w0.25'", "--group_b", "torchvision:resnet18?input_size=32", "--device", "cpu"]
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(other_classes))) == 2
    assert ("torchvision:resnet18?input_size=32 predicts 1000 classes but dataset 'cifar10' has 10"
            in capsys.readouterr().err)
