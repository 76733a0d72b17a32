"""What a served model accepts: uint8 images (N, 3, H, W) at the size it was trained at, pixel
values 0 to 255 as stored on disk, and nothing that could be misread as them.

Why the check lives here and not in the model's signature: MLflow's scoring server casts a JSON
payload to the signature's input dtype before the model sees it, so `{"inputs": images / 255}`
against a uint8 signature becomes an almost black image and is answered 200. Registered versions
therefore declare their output (float32 logits) but not their input, the server hands the payload
over as JSON gave it (int64 or float64), and `served_images` refuses, in one line naming the
expected dtype, shape and range, whatever is not such images: floats (in [0, 1] or not), values
outside 0 to 255, another layout or size, an empty batch. `pyfunc.predict` and the server go
through the same check, so they agree.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

__all__ = ["served_images", "expected_input", "PayloadError"]


class PayloadError(MlflowException):
    """A refused payload: HTTP 400 from the scoring server, with this one line as its message.
    The server rewrites an MlflowException's message to "Failed to predict data '<the whole
    payload>'. Error: ..." (mlflow.pyfunc.scoring_server), which would echo megabytes of pixels
    across many lines; this exception keeps the line it was raised with."""

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_line"):  # set once, by MlflowException.__init__
            self._line = value


def expected_input(shape: Sequence[int] | None) -> str:
    """The one-line description of a valid payload, for errors and docs."""
    size = f"(N, {', '.join(map(str, shape))})" if shape else "(N, 3, H, W)"
    return f"uint8 images {size}, channels first, integer pixel values 0 to 255 as stored (not floats in [0, 1])"


def _refuse(problem: str, shape: Sequence[int] | None) -> PayloadError:
    return PayloadError(f"{problem}; expected {expected_input(shape)}", error_code=INVALID_PARAMETER_VALUE)


def served_images(model_input: Any, shape: Sequence[int] | None = None) -> np.ndarray:
    """`model_input` as uint8 images (N, 3, H, W), or a PayloadError (HTTP 400) saying what is
    wrong. `shape`: the trained (3, H, W), when the version records it."""
    if hasattr(model_input, "to_numpy") and not isinstance(model_input, np.ndarray):
        raise _refuse('a table (dataframe_split or dataframe_records) was sent; send the images as {"inputs": ...}', shape)
    try:
        images = np.asarray(model_input)
    except (ValueError, TypeError):
        raise _refuse("the images are not one rectangular array", shape) from None
    if images.dtype == object or images.dtype.kind not in "uif":
        raise _refuse(f"values of type {images.dtype} were sent", shape)
    if images.ndim >= 1 and len(images) == 0:  # JSON's [] is shape (0,)
        raise _refuse("an empty batch was sent; send one or more images", shape)
    if images.ndim != 4:
        raise _refuse(f"an array of shape {images.shape} was sent", shape)
    if images.shape[1] != 3 and images.shape[-1] == 3:
        raise _refuse(f"channels-last images {images.shape} were sent; transpose them to (N, 3, H, W)", shape)
    if images.shape[1] != 3 or (shape is not None and tuple(images.shape[1:]) != tuple(shape)):
        raise _refuse(f"images of shape {images.shape} were sent", shape)
    if images.dtype.kind == "f":
        low, high = float(np.nanmin(images)), float(np.nanmax(images))
        hint = " (images scaled to [0, 1]? send the stored uint8 values)" if high <= 1 else ""
        raise _refuse(f"floating-point values in [{low:g}, {high:g}] were sent{hint}", shape)
    if images.dtype != np.uint8:
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise _refuse(f"integer values in [{low}, {high}] were sent, outside 0 to 255", shape)
    return np.ascontiguousarray(images, dtype=np.uint8)
