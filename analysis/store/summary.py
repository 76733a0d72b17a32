"""summary.json of one model's analysis, as a typed record: written by the analysis (render.py),
read back by the comparison and the report (results.py), one schema for both.

The file is flat JSON, as it has always been; fields that an older analysis did not write (or an
analysis that did not run them) read back as None, and keys this version does not know are kept
aside in `extra`, so old stores stay readable.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

__all__ = ["ModelSummary", "DominantSummary"]


@dataclasses.dataclass
class DominantSummary:
    """What summary.json keeps of the dominant-example analysis."""

    k: int
    top: dict[str, list[int]]  # layer -> its top-k test-set indices, largest share first
    groups: list[dict]  # {"label", "test_index", "share"} per block (or for all layers)
    statistics: dict[str, dict[str, float]]  # "dominant" / "others" -> image statistic -> mean

    @classmethod
    def from_dict(cls, d: dict) -> "DominantSummary":
        return cls(int(d["k"]), d["top"], d.get("groups", []), d.get("statistics", {}))


@dataclasses.dataclass
class ModelSummary:
    """One model's analysis: what was analysed and how, and what was found."""

    model_uri: str
    layer_names: list[str]
    metrics: dict[str, float]
    blocks: list[dict]  # science.blocks.Block as dicts: start, end, first_layer, last_layer, length, fraction, mean_cka
    train_run_id: str | None = None
    version_tags: dict[str, str] = dataclasses.field(default_factory=dict)
    num_examples: int | None = None
    batches: int | None = None
    passes: int | None = None
    batch_size: int | None = None
    layers: str | None = None
    analyses: list[str] = dataclasses.field(default_factory=list)
    probe_pool: int | None = None
    precision: str | None = None
    batchnorm: str | None = None  # the BatchNorm statistics analysed with: running or batch (absent before it existed: running)
    pc1_share: dict[str, float] | None = None
    pc1_residual_max: float | None = None
    probe_accuracy: dict[str, dict[str, float]] | None = None  # probe training set -> layer -> accuracy
    deletion_accuracy: dict[str, float] | None = None  # block -> accuracy with it deleted
    dominant: DominantSummary | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    def write(self, path: Path) -> None:
        fields = dataclasses.asdict(self)
        extra = fields.pop("extra")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**extra, **{k: v for k, v in fields.items() if v is not None}}, indent=2, default=float))

    @classmethod
    def read(cls, path: Path) -> "ModelSummary":
        fields = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        summary = cls(**{k: v for k, v in fields.items() if k in known},
                      extra={k: v for k, v in fields.items() if k not in known})
        if isinstance(summary.dominant, dict):
            summary.dominant = DominantSummary.from_dict(summary.dominant)
        return summary
