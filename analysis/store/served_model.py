"""A registered ResNet as MLflow's python_function flavor, through MLflow's "models from code".

MLflow runs this file by path when it loads a version (`mlflow.pyfunc.load_model`, `mlflow
models predict`, `mlflow models serve`); it is never imported as part of the package. Nothing
is unpickled: the network is rebuilt from the version's config.json and its safetensors weights,
the same two files `analysis.registry.load_model` reads.

    mlflow.pyfunc.load_model("models:/cifar10-resnet20-w1/1").predict(images)
    # images: uint8 (N, 3, H, W), as stored on disk; returns float32 logits (N, classes)
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from analysis.nets import predict_logits
from analysis.store.model_files import read_model_files


class ResNetClassifier(PythonModel):
    def load_context(self, context) -> None:
        directory = Path(context.artifacts["config"]).parent
        _, _, self.model = read_model_files(directory, str(directory))
        self.model.eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        images = np.ascontiguousarray(model_input)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {images.shape}")
        return predict_logits(self.model, torch.from_numpy(images)).cpu().numpy()


mlflow.models.set_model(ResNetClassifier())
