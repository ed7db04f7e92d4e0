"""Semantic segmentation: UperNet and Semantic FPN on sofa backbones, and whole / sliding-window inference.

The heads are segmentation_models_pytorch's (``smp.UPerNet``, ``smp.FPN``) with the backbone as a ``tu-`` encoder
(timm's ``features_only`` interface, strides 4–32). Own code is limited to what smp lacks:

* :class:`Segmentor` pads any input to a multiple of 32 (smp insists on it) and crops the logits back, so every
  input size works; it returns logits at the input resolution.
* The auxiliary FCN head of mmseg's UperNet configs (on the stride-16 features, loss weight 0.4, training only).

How the heads compare with the papers' mmsegmentation configs (see docs/dense.md):
UperNet — smp's decoder is mmseg's ``UPerHead`` (PPM with bins 1, 2, 3, 6 on stride 32, FPN laterals, 3×3 FPN
convs, fusion 3×3 conv) plus a LayerNorm on each backbone feature; mmseg uses 512 channels (``decoder_channels``
here defaults to 512). Semantic FPN — mmseg's FPN neck + ``FPNHead`` (PoolFormer's config): smp's ``FPNDecoder``
has the same top-down pathway (1×1 laterals, nearest upsampling, sum) and the same per-level heads
(3×3 conv–norm–ReLU blocks with ×2 upsampling to stride 4, 128 channels, summed), but no 3×3 smoothing conv
after each lateral sum, GroupNorm(32) instead of BatchNorm in the head, align_corners=True in the head's
upsampling, and Dropout2d 0.2 (set to 0.1 here, as mmseg).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sofa.dense.backbones import default_head, load_backbone_checkpoint, timm_encoder_name

__all__ = ["Segmentor", "build_segmentor", "FCNAuxHead", "slide_inference", "predict_labels", "segmentation_loss"]


class FCNAuxHead(nn.Module):
    """mmseg's auxiliary ``FCNHead`` (one 3×3 conv–BN–ReLU, Dropout2d 0.1, 1×1 classifier)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.dropout(self.conv(x)))


class Segmentor(nn.Module):
    """An smp model with size handling and the optional auxiliary head.

    ``forward(x (B, 3, H, W))`` → logits ``(B, num_classes, H, W)``; in training mode with an auxiliary head it
    returns ``(logits, aux_logits)`` (both at the input resolution).
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        aux_head: nn.Module | None = None,
        aux_index: int = -2,
        size_divisor: int = 32,
    ):
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.aux_head = aux_head
        self.aux_index = aux_index
        self.size_divisor = size_divisor

    def forward(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        features = self.net.encoder(x)
        logits = self.net.segmentation_head(self.net.decoder(features))[..., :h, :w]
        if self.training and self.aux_head is not None:
            aux = self.aux_head(features[self.aux_index])
            aux = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]
            return logits, aux
        return logits


def build_segmentor(
    backbone: str,
    num_classes: int,
    head: str = "auto",
    decoder_channels: int | None = None,
    aux_head: bool | None = None,
    backbone_checkpoint: str | None = None,
    **backbone_kwargs: Any,
) -> Segmentor:
    """UperNet (``head="upernet"``) or Semantic FPN (``head="fpn"``) on ``backbone``.

    Args:
        backbone: a sofa model name (``soft_tiny``, ``setformer_mini``, ``poolformer_s12`` …) or any timm model.
        head: ``"auto"`` picks the papers' choice: FPN for PoolFormer, UperNet for SOFT and SeTformer.
        decoder_channels: UperNet channels (default 512, as mmseg) / FPN pyramid channels (default 256).
        aux_head: mmseg's auxiliary FCN head on the stride-16 features (default: on for UperNet, off for FPN).
        backbone_checkpoint: a classification checkpoint loaded into the backbone.
        **backbone_kwargs: passed to the backbone (e.g. ``drop_path_rate``, SOFT's bounded-landmark option).
    """
    import segmentation_models_pytorch as smp

    head = default_head(backbone) if head == "auto" else head
    encoder = "tu-" + timm_encoder_name(backbone)
    kwargs = {k: v for k, v in backbone_kwargs.items() if v is not None}
    if head == "upernet":
        net = smp.UPerNet(
            encoder_name=encoder,
            encoder_weights=None,
            classes=num_classes,
            decoder_channels=decoder_channels or 512,
            **kwargs,
        )
    elif head == "fpn":
        net = smp.FPN(
            encoder_name=encoder,
            encoder_weights=None,
            classes=num_classes,
            decoder_pyramid_channels=decoder_channels or 256,
            decoder_segmentation_channels=128,
            decoder_dropout=0.1,
            decoder_interpolation="nearest",
            **kwargs,
        )
    else:
        raise ValueError(f"unknown segmentation head {head!r}; expected 'upernet', 'fpn' or 'auto'")
    if backbone_checkpoint:
        load_backbone_checkpoint(
            net.encoder.model, backbone, backbone_checkpoint, out_indices=_encoder_out_indices(net.encoder), **kwargs
        )
    aux = None
    if aux_head if aux_head is not None else head == "upernet":
        channels = net.encoder.out_channels[-2]  # the stride-16 features
        aux = FCNAuxHead(channels, num_classes)
    model = Segmentor(net, num_classes, aux)
    model.head_type = head
    return model


def _encoder_out_indices(encoder) -> tuple:
    info = encoder.model.feature_info
    return tuple(info.out_indices) if hasattr(info, "out_indices") else tuple(range(len(info.channels())))


def segmentation_loss(output, label: torch.Tensor, ignore_index: int = 255, aux_weight: float = 0.4):
    """Pixel-wise cross-entropy (mean over labelled pixels) + ``aux_weight`` × the auxiliary head's.

    Returns ``(loss, logs)``; a batch with no labelled pixel gives a zero loss that still back-propagates.
    """
    logits, aux = output if isinstance(output, (tuple, list)) else (output, None)
    valid = (label != ignore_index).any()

    def ce(x):
        if not valid:
            return x.sum() * 0.0
        return F.cross_entropy(x.float(), label, ignore_index=ignore_index)

    loss_main = ce(logits)
    logs = {"ce": loss_main.detach()}
    loss = loss_main
    if aux is not None:
        loss_aux = ce(aux)
        logs["aux_ce"] = loss_aux.detach()
        loss = loss + aux_weight * loss_aux
    return loss, logs


@torch.no_grad()
def slide_inference(
    model: nn.Module, img: torch.Tensor, num_classes: int, crop_size: Sequence[int], stride: Sequence[int]
) -> torch.Tensor:
    """mmseg's sliding-window inference: average the logits of overlapping ``crop_size`` windows.

    ``img`` ``(B, 3, H, W)`` → logits ``(B, C, H, W)``. Windows are placed every ``stride`` pixels and the last one
    is shifted back to end at the border; an image smaller than the crop is one window of its own size.
    """
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    b, _, h, w = img.shape
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    logits = img.new_zeros((b, num_classes, h, w))
    count = img.new_zeros((1, 1, h, w))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * h_stride, wi * w_stride
            y2, x2 = min(y1 + h_crop, h), min(x1 + w_crop, w)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            out = model(img[:, :, y1:y2, x1:x2])
            logits[:, :, y1:y2, x1:x2] += out.float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    images: torch.Tensor,
    img_shapes: Sequence[tuple[int, int]],
    ori_shapes: Sequence[tuple[int, int]],
    num_classes: int,
    mode: str = "whole",
    crop_size: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
) -> list[torch.Tensor]:
    """Label maps at the original sizes for a padded batch of rescaled images (see ``seg_eval_collate``).

    Returns a list of ``(H_i, W_i)`` int64 tensors. ``mode``: ``"whole"`` (one forward of the whole image) or
    ``"slide"`` (:func:`slide_inference`).
    """
    if mode == "whole":
        logits = model(images).float()
    elif mode == "slide":
        logits = slide_inference(model, images, num_classes, crop_size, stride)
    else:
        raise ValueError(f"unknown inference mode {mode!r}; expected 'whole' or 'slide'")
    preds = []
    for i, ((h, w), ori) in enumerate(zip(img_shapes, ori_shapes, strict=False)):
        lg = logits[i : i + 1, :, :h, :w]
        if (h, w) != tuple(ori):
            lg = F.interpolate(lg, size=tuple(ori), mode="bilinear", align_corners=False)
        preds.append(lg.argmax(1)[0])
    return preds
