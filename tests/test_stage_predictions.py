"""The predictions stage end to end: files, metrics, and test logits cached on the versions."""

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
    tag = client.get_model_version("cifar10-resnet8-w0.5", "1").tags[c.TEST_LOGITS]
    assert tag.startswith(f"runs:/{first[0].info.run_id}/logits/")

    # A second comparison reuses every model's logits: it logs none of its own.
    assert run_main(lambda: pred_entry.main(pred_entry.parse_args(argv))) == 0
    runs = runs_of("predictions")
    second = next(r for r in runs if r.info.run_id != first[0].info.run_id)
    assert client.list_artifacts(second.info.run_id, c.LOGITS_DIR) == []
    assert second.data.metrics["cross_disagreement"] == first[0].data.metrics["cross_disagreement"]
