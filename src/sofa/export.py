"""Export a model to ONNX through PyTorch's exporter (``torch.onnx.export(..., dynamo=True)``).

The exporter captures the model with ``torch.export``; every op's ``"auto"`` rule then picks its plain graph form
(see :func:`sofa.ops.common.is_tracing`), so SOFT's Newton–Schulz iterations and SeT's Sinkhorn iterations become
plain matrix products in the file. Needs the ``export`` extra (``pip install 'sofa[export]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import torch
from torch import nn

__all__ = ["export_onnx", "OPSET", "STRIDE"]

#: the ONNX opset written
OPSET = 18
#: the total stride of every image model: with ``dynamic``, height and width may be any multiple of it
STRIDE = 32


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    img_size: Tuple[int, int] = (224, 224),
    dynamic: bool = False,
    opset: int = OPSET,
) -> Path:
    """Write ``model`` (in eval mode) to ``path`` as an ONNX model with one float32 input ``image`` of shape
    (B, 3, H, W) and the model's outputs.

    Args:
        model: an image model of the zoo (classifier or ``features_only``).
        path: the ``.onnx`` file to write.
        img_size: (H, W) of the example input; the file's input size when not ``dynamic``.
        dynamic: batch, height and width become symbolic (height and width multiples of :data:`STRIDE`).
        opset: the ONNX opset version (≥ 17).

    Returns:
        ``path``.
    """
    path = Path(path)
    model = model.eval()
    example = torch.randn(2 if dynamic else 1, 3, *img_size)
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=1024)
        height = STRIDE * torch.export.Dim("height_blocks", min=1, max=128)
        width = STRIDE * torch.export.Dim("width_blocks", min=1, max=128)
        shapes = ({0: batch, 2: height, 3: width},)
    with torch.no_grad():
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=opset, input_names=["image"], dynamic_shapes=shapes
        )
    program.save(str(path))
    return path
