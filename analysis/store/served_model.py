"""A registered ResNet as MLflow's python_function flavor, through MLflow's "models from code".

MLflow runs this file by path when it loads a version (`mlflow.pyfunc.load_model`, `mlflow
models predict`, `mlflow models serve`); it is never imported as part of the package. Nothing
is unpickled: the network is rebuilt from the version's config.json and its safetensors weights,
the same two files `analysis.registry.load_model` reads.

    mlflow.pyfunc.load_model("models:/cifar10-resnet20-w1/1").predict(images)
    # images: uint8 (N, 3, H, W), as stored on disk; returns float32 logits (N, classes)

Anything else (floats, values outside 0 to 255, another layout or size, an empty batch) is
refused in one line by analysis.store.payload, which says why the input is checked there and not
declared in the signature.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from analysis.nets import predict_logits
from analysis.store.model_files import read_model_files
from analysis.store.payload import served_images


class ResNetClassifier(PythonModel):
    def load_context(self, context) -> None:
        directory = Path(context.artifacts["config"]).parent
        _, training, self.model = read_model_files(directory, str(directory))
        self.model.eval()
        self.input_shape = training.get("input_shape")  # (3, H, W); absent in versions registered before it was kept

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        images = served_images(model_input, self.input_shape)
        return predict_logits(self.model, torch.from_numpy(images)).cpu().numpy()


mlflow.models.set_model(ResNetClassifier())
