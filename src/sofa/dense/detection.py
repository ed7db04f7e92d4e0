"""Object detection and instance segmentation: torchvision's RetinaNet and Mask R-CNN on sofa backbones.

:class:`FeaturePyramidBackbone` is torchvision's ``BackboneWithFPN`` for a timm-style ``features_only`` network:
it picks the backbone levels by stride and runs ``torchvision.ops.FeaturePyramidNetwork`` on them. The two
detectors follow the papers' mmdetection 1x configs:

* RetinaNet: levels at strides 8, 16, 32 (P3–P5) plus P6 and P7 from ``LastLevelP6P7`` on C5 (mmdet's
  ``add_extra_convs='on_input'``), 256 channels, torchvision's ``RetinaNet`` (focal loss, 4-conv heads).
* Mask R-CNN: levels at strides 4–32 (P2–P5) plus a max-pooled P6 (``LastLevelMaxPool``) for the RPN,
  torchvision's ``MaskRCNN`` (RoIAlign 7×7 boxes / 14×14 masks).

Resizing (``min_size``/``max_size``, 800/1333 for COCO), normalisation and padding to 32 happen in the detectors'
``GeneralizedRCNNTransform``; outputs come back in the input image's pixel coordinates.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from sofa.dense.backbones import create_features, feature_strides

__all__ = ["FeaturePyramidBackbone", "build_detector", "DETECTORS"]

DETECTORS = ("retinanet", "maskrcnn")


class FeaturePyramidBackbone(nn.Module):
    """A ``features_only`` body + torchvision FPN → ``OrderedDict`` of maps (``"0"``, ``"1"``, … and the extra).

    Args:
        body: returns a list of NCHW maps and has timm's ``feature_info``.
        strides: which of the body's levels feed the FPN (e.g. ``(8, 16, 32)``).
        out_channels: FPN width (``self.out_channels``, as torchvision's detectors expect).
        extra_blocks: ``LastLevelP6P7`` / ``LastLevelMaxPool`` (torchvision.ops.feature_pyramid_network).
    """

    def __init__(
        self, body: nn.Module, strides: Sequence[int], out_channels: int = 256, extra_blocks: nn.Module | None = None
    ):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        body_strides = feature_strides(body)
        missing = [s for s in strides if s not in body_strides]
        if missing:
            raise ValueError(f"the backbone has no features at stride(s) {missing}; it gives {body_strides}")
        self.body = body
        self.indices = [body_strides.index(s) for s in strides]
        # dense output norms of levels the FPN does not take would hold parameters without gradients (which DDP
        # rejects): replace them by identity, as PoolFormer's released RetinaNet configs do for stride 4
        norms = getattr(getattr(body, "model", None), "out_norms", None)
        if isinstance(norms, nn.ModuleList):
            for i in range(len(norms)):
                if i not in self.indices:
                    norms[i] = nn.Identity()
        self.strides = tuple(strides)
        channels = body.feature_info.channels()
        self.in_channels_list = [channels[i] for i in self.indices]
        self.fpn = FeaturePyramidNetwork(self.in_channels_list, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(k), feats[i]) for k, i in enumerate(self.indices)))


def build_detector(
    kind: str,
    backbone: str,
    num_classes: int,
    backbone_checkpoint: str | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_base: int = 32,
    fpn_channels: int = 256,
    detector_kwargs: dict | None = None,
    **backbone_kwargs: Any,
) -> nn.Module:
    """RetinaNet or Mask R-CNN on a sofa (or timm) backbone.

    Args:
        kind: ``"retinanet"`` or ``"maskrcnn"``.
        num_classes: object classes, *without* background (the model gets ``num_classes + 1`` outputs, labels
            1…K, torchvision's convention).
        backbone_checkpoint: a classification checkpoint loaded into the backbone.
        min_size / max_size: the resize of ``GeneralizedRCNNTransform`` (800 / 1333 on COCO).
        anchor_base: anchor size on the finest level (32 as in torchvision and mmdet; each level doubles it).
            Lower it with ``min_size`` for small images (the synthetic shapes use 16 at ``min_size=160``).
        fpn_channels: FPN width (256 in the papers); Mask R-CNN's box MLP (4×) and mask convolutions scale with it.
        detector_kwargs: extra arguments of torchvision's ``RetinaNet`` / ``MaskRCNN`` (e.g.
            ``box_batch_size_per_image``).
        **backbone_kwargs: passed to the backbone (``drop_path_rate``, SOFT's bounded-landmark option …).
    """
    if kind not in ("retinanet", "maskrcnn", "mask_rcnn"):
        raise ValueError(f"unknown detector {kind!r}; expected one of {DETECTORS}")
    kw = {k: v for k, v in backbone_kwargs.items() if v is not None}
    body = create_features(backbone, checkpoint_path=backbone_checkpoint, **kw)
    build = _retinanet if kind == "retinanet" else _mask_rcnn
    model = build(body, num_classes, min_size, max_size, anchor_base, fpn_channels, dict(detector_kwargs or {}))
    model.detector_type = "maskrcnn" if kind.startswith("mask") else kind
    return model


def _retinanet(body, num_classes, min_size, max_size, anchor_base, fpn_channels, extra) -> nn.Module:
    """RetinaNet on P3–P7 (P6/P7 from C5 where the backbone has it), three anchor scales an octave apart."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    strides = (8, 16, 32)
    c5 = body.feature_info.channels()[feature_strides(body).index(32)] if 32 in feature_strides(body) else None
    fpn = FeaturePyramidBackbone(body, strides, fpn_channels, LastLevelP6P7(c5 or fpn_channels, fpn_channels))
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (anchor_base * 2**i for i in range(5)))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(
        fpn, num_classes=num_classes + 1, min_size=min_size, max_size=max_size, anchor_generator=anchors, **extra
    )


def _mask_rcnn(body, num_classes, min_size, max_size, anchor_base, fpn_channels, extra) -> nn.Module:
    """Mask R-CNN on P2–P6, its box and mask heads scaled with the FPN width (torchvision's at 256)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    strides = (4, 8, 16, 32)
    fpn = FeaturePyramidBackbone(body, strides, fpn_channels, LastLevelMaxPool())
    sizes = tuple((anchor_base * 2**i,) for i in range(5))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    classes = num_classes + 1
    if fpn_channels != 256 and "box_head" not in extra:
        extra.update(_scaled_mask_rcnn_heads(fpn_channels, classes))
        classes = None  # the predictors given carry the classes
    return MaskRCNN(
        fpn, num_classes=classes, min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors, **extra
    )


def _scaled_mask_rcnn_heads(fpn_channels: int, classes: int) -> dict[str, nn.Module]:
    """torchvision's Mask R-CNN heads scaled with the FPN width (at 256: its defaults, a 1024-wide box MLP and
    four 256-channel mask convolutions)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    rep = 4 * fpn_channels
    return dict(
        box_head=TwoMLPHead(fpn_channels * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, classes),
        mask_head=MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, classes),
    )
