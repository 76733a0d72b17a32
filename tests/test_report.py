"""The study report (analysis/report.py) from a small fake store: two seeds of one architecture
analysed together, a comparison run and a predictions run, written with the project's own
writers; every section shows the numbers that were logged."""

import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest

from analysis.config import STUDY_PRESETS
from analysis.render import write_comparison, write_heatmap, write_matrix, write_model_report, write_predictions
from analysis.report import SECTIONS, StudyResults, cross_seed_numbers, write_report
from analysis.science.blocks import Block
from analysis.science.dominant import Dominant, DominantGroup, jaccard
from analysis.science.explain import ModelReport, explanation_metrics
from analysis.science.predictions import compare_groups
from analysis.store import contract as c
from analysis.store import queries
from analysis.store.summary import ModelSummary
from tests.fake_store import register_model, uri

NAMES = [f"stage1.block{i}.relu" for i in range(1, 9)]
CROSS = np.diag([0.9, 0.9, 0.3, 0.3, 0.3, 0.3, 0.9, 0.9])


def planted_dominant(seed: int) -> Dominant:
    """Examples 0 and 1 dominate every layer of seed 0 (shares 0.4 and 0.3); seed 1 has the same
    ones outside its block (layers 2-5) and examples 2 and 3 inside it."""
    top = np.array([[2, 3] if seed == 1 and 2 <= layer <= 5 else [0, 1] for layer in range(8)])
    shares = np.full((8, 20), 0.3 / 18)
    np.put_along_axis(shares, top, np.array([[0.4, 0.3]] * 8), axis=1)
    group = DominantGroup("block 2-5", top[3], np.array([0.4, 0.3]), np.zeros((2, 3, 4, 4), dtype=np.uint8))
    stats = {"red": 0.5, "green": 0.5, "blue": 0.5, "brightness": 0.5, "contrast": 0.1}
    return Dominant(2, np.arange(100, 120), shares, top, jaccard(top), [group], {"dominant": stats, "others": stats})


def analysed_pair() -> list[str]:
    """Seeds 0 and 1 of one architecture, analysed together the way `analyze` logs a group."""
    versions = [register_model(8, 0.25, seed, train_accuracy="0.97") for seed in (0, 1)]
    labels = [f"{v.name}-v{v.version}" for v in versions]
    with mlflow.start_run():
        mlflow.set_tags({c.KIND: "analyze", c.ANALYSIS_MODELS: ",".join(uri(v) for v in versions)})
        for v, label, largest in zip(versions, labels, (0.5, 0.25)):
            block = Block(2, 5, NAMES[2], NAMES[5], 4, largest, 0.96)
            report = ModelReport(label, NAMES, np.eye(8), [block], {c.ANALYSIS_ACCURACY: 0.5, "block_count": 1.0,
                                 "block_largest_frac": largest, "block_mean_cka": 0.96},
                                 cka_without_pc1=np.full((8, 8), 0.2), cka_pc1_only=np.eye(8), pc1_share=np.linspace(0.1, 0.8, 8),
                                 pc1_residual=np.zeros(8), dominant=planted_dominant(int(v.tags["seed"])))
            report.metrics.update(explanation_metrics(report))
            with mlflow.start_run(nested=True), tempfile.TemporaryDirectory() as tmp:
                mlflow.set_tags({c.KIND: "analyze", c.ANALYSIS_MODEL_URI: uri(v), c.MODEL_NAME: v.name,
                                 c.MODEL_VERSION: str(v.version), **{k: v.tags[k] for k in c.VERSION_CONFIG}})
                mlflow.log_metrics(report.metrics)
                write_model_report(Path(tmp), report, ModelSummary(uri(v), [], {}, []), 0.97)
                mlflow.log_artifacts(tmp, c.CKA_DIR)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / c.cross_dir(*labels)
            write_matrix(out, "cka", CROSS, NAMES, NAMES)
            write_heatmap(out, "heatmap", CROSS, NAMES, NAMES)
            mlflow.log_artifacts(tmp)
    return [uri(v) for v in versions]


def logged_run(kind: str, write) -> str:
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tag(c.KIND, kind)
        write(Path(tmp))
        mlflow.log_artifacts(tmp)
    return run.info.run_id


def test_every_section_shows_the_logged_numbers(store):
    uris = analysed_pair()
    rows = queries.analysed_models_api()
    assert list(rows["block_largest_frac"]) == [0.5, 0.25]
    compare_run = logged_run("compare", lambda d: write_comparison(rows, queries.aggregate(rows), {}, d / c.COMPARISON_DIR))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    preds = np.where(rng.random((4, 200)) < 0.7, labels, rng.integers(0, 10, (4, 200)))
    result = compare_groups(preds[:2], preds[2:], labels, 10, 0.05, 99)
    predictions_run = logged_run("predictions", lambda d: write_predictions(result, uris, ["models:/x/1", "models:/x/2"],
                                                                          [str(i) for i in range(10)], labels,
                                                                          d / c.PREDICTIONS_DIR))
    results = StudyResults(rows=rows, compare_run_id=compare_run, predictions_run_id=predictions_run, group_a=uris,
                           group_b=["models:/x/1", "models:/x/2"], predictions=result.metrics(),
                           timings={"sweep": 1.0})
    path, judged = write_report(STUDY_PRESETS["smoke"], results, store / "report", "run-id")
    page = path.read_text()

    sections = {k: re.search(rf'<section id="{k}">(.*?)</section>', page, re.S).group(1) for k in SECTIONS}
    assert "0.500" in sections["block-structure"] and "0.250" in sections["block-structure"]
    pc1_in = np.linspace(0.1, 0.8, 8)[2:6].mean()
    assert f"{pc1_in:.3f}" in sections["pc1"]
    assert "0.200" in sections["without-pc1"]  # block_mean_cka_without_pc1 of the flat 0.2 matrix
    assert f"{result.metrics()['cross_disagreement']:.3f}" in sections["predictions"]
    # Cross-seed: the same layer's CKA is 0.3 inside seed 0's block (layers 2-5) and 0.9 outside.
    assert "0.300" in sections["cross-seed"] and "0.900" in sections["cross-seed"]
    assert "0.700" in sections["dominant"]  # the top 2 hold 0.4 + 0.3 of each block layer's PC1
    # Verdicts, from the planted numbers: PC1 carries more inside the block (its share rises along
    # the layers), removing it breaks the block (0.2), the same layer of two seeds is more alike
    # outside the block (0.9) than inside (0.3); one architecture has no control to contrast, and
    # two seeds per group cannot reach p < 0.05. No model is under-trained: no banner.
    assert judged["pc1"].status == "supports" and judged["without-pc1"].status == "supports"
    assert judged["cross-seed"].status == "supports"
    assert judged["block-structure"].status == "cannot test" and "one architecture" in judged["block-structure"].reason
    assert judged["predictions"].status == "cannot test" and "cannot go below p = 0.33" in judged["predictions"].reason
    assert 'This study <b>supports</b> it' in sections["pc1"] and 'class="banner"' not in page

    assert "<td>dominant</td>" in sections["dominant"] and "<td>others</td>" in sections["dominant"]  # image statistics
    assert sections["dominant"].count("<img") >= 4  # each seed's overlap heatmap and its block's images
    assert (store / "report" / c.COMPARISON_DIR / "table.csv").exists()
    assert (store / "report" / c.PREDICTIONS_DIR / "per_class.png").exists()


def test_cross_seed_numbers_read_the_groups_cross_matrix(store):
    analysed_pair()
    table, figures = cross_seed_numbers(queries.analysed_models_api())
    assert len(table) == 1 and len(figures) == 1 and figures[0][1].exists()
    assert table.iloc[0]["same_layer_cka_in_block"] == pytest.approx(0.3)
    assert table.iloc[0]["same_layer_cka_outside"] == pytest.approx(0.9)
    # The same layer's dominant examples: other images inside seed 0's block, the same outside.
    assert table.iloc[0]["dominant_overlap_across_seeds_in_block"] == 0.0
    assert table.iloc[0]["dominant_overlap_across_seeds_outside"] == 1.0


@pytest.mark.parametrize("name", ["$x^$", "a$b$c", "cifar10-resnet8-w0.25-v1 ($5)"])
def test_names_with_dollar_signs_are_drawn_as_text_not_math(tmp_path, name):
    from matplotlib.text import Text

    write_heatmap(tmp_path, "heatmap", np.eye(4), [f"{name} layer{i}" for i in range(4)], title=name, subtitle=name)
    assert (tmp_path / "heatmap.png").stat().st_size > 0  # '$x^$' failed the analysis at its last step before
    assert Text(text=name).get_parse_math() is False


def test_the_verdicts_leave_out_under_trained_models_and_the_report_says_so_at_the_top():
    import pandas as pd

    from analysis.report import _banner
    from analysis.verdicts import verdicts

    def model(depth, width, seed, train, blocks):
        return {c.DEPTH: depth, c.WIDTH: width, c.DATA_FRACTION: 0.02, c.SEED: seed, c.TRAIN_ACCURACY: train,
                c.BLOCK_COUNT: blocks, c.PC1_SHARE_IN_BLOCK: 0.4 if blocks else None, c.PC1_SHARE_OUTSIDE: 0.2}

    # The deep model has its block in both seeds, the control in none: supported. An under-trained
    # control with a "block" (as under-trained ResNets show) must not count against it.
    numbers = pd.DataFrame([model(56, 1, 0, 0.97, 1), model(56, 1, 1, 0.99, 1), model(20, 1, 0, 0.98, 0),
                            model(20, 1, 1, 0.98, 0), model(20, 1, 2, 0.40, 1)])
    judged = verdicts(numbers, pd.DataFrame(), {c.DISAGREEMENT_P_VALUE: 0.01}, seeds_per_group=4)
    assert judged["block-structure"].status == "supports"
    assert "ResNet-56 w1 has a block in 100% of its 2 fitted seed(s); ResNet-20 w1 has a block in 0% of its 2" in judged["block-structure"].reason
    assert judged["pc1"].status == "supports" and judged["predictions"].status == "supports"
    assert judged["cross-seed"].status == "cannot test"
    banner = _banner(numbers)
    assert "1 of 5 models fit less than 90% of their training set" in banner and "ResNet-20 w1 · data 0.02 · seed 2 (40%)" in banner

    # One deep seed of two with a block: it leans the paper's way, but two seeds cannot decide.
    half = numbers.copy()
    half.loc[(half[c.DEPTH] == 56) & (half[c.SEED] == 1), c.BLOCK_COUNT] = 0
    assert verdicts(half, pd.DataFrame(), {}, 2)["block-structure"].status == "cannot test"
    # When the control has the block too, the claim is contradicted; with every model under-trained, nothing can be tested.
    numbers.loc[numbers[c.DEPTH] == 20, c.BLOCK_COUNT] = 1
    assert verdicts(numbers, pd.DataFrame(), {}, 2)["block-structure"].status == "contradicts"
    numbers[c.TRAIN_ACCURACY] = 0.5
    assert {v.status for k, v in verdicts(numbers, pd.DataFrame(), {}, 2).items() if k != "predictions"} == {"cannot test"}

