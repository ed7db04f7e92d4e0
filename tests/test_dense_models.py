"""Dense heads on sofa backbones: forward/backward on small non-square images, inference, checkpoint loading."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("segmentation_models_pytorch")

import sofa  # noqa: E402,F401  (registers the models in timm)
from sofa.dense.backbones import create_features, timm_encoder_name  # noqa: E402
from sofa.dense.detection import build_detector  # noqa: E402
from sofa.dense.segmentation import build_segmentor, predict_labels, segmentation_loss, slide_inference  # noqa: E402

SMALL = dict(decoder_channels=32)


def _grad_reaches_backbone(model) -> bool:
    return any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.named_parameters()
        if "encoder" in n or "body" in n
    )


def test_timm_names_of_sofa_models():
    assert timm_encoder_name("soft_tiny") == "soft_tiny"
    assert timm_encoder_name("poolformer_s12") == "sofa_poolformer_s12"  # timm owns poolformer_s12
    assert timm_encoder_name("resnet18") == "resnet18"
    with pytest.raises(ValueError, match="unknown backbone"):
        timm_encoder_name("no_such_model")


@pytest.mark.parametrize(
    "backbone,head,kwargs",
    [
        ("soft_mini", "upernet", {"max_landmarks": 16}),  # bounded landmarks
        ("soft_mini", "upernet", {}),  # released stride landmarks
        ("setformer_mini", "upernet", {"depths": (1, 1, 1, 1), "dims": (32, 64, 96, 128)}),  # one block per stage
        ("poolformer_mini", "auto", {}),  # auto = Semantic FPN for PoolFormer
    ],
)
def test_segmentor_forward_backward_any_size(backbone, head, kwargs):
    model = build_segmentor(backbone, num_classes=5, head=head, **SMALL, **kwargs)
    assert model.head_type == ("fpn" if backbone.startswith("poolformer") else "upernet")
    x = torch.randn(2, 3, 72, 100)  # neither square nor a multiple of 32
    y = torch.randint(0, 5, (2, 72, 100))
    y[:, :5] = 255
    model.train()
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 5, 72, 100)
    assert isinstance(out, tuple) == (model.head_type == "upernet")  # the auxiliary FCN head
    loss, logs = segmentation_loss(out, y)
    assert torch.isfinite(loss)
    loss.backward()
    assert _grad_reaches_backbone(model)
    assert all(p.grad is not None for p in model.parameters())  # DDP needs every parameter in the graph
    model.eval()
    with torch.no_grad():
        assert model(x[:1, :, :40, :56]).shape == (1, 5, 40, 56)


def test_segmentation_loss_ignores_ignore_index():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    label = torch.full((1, 4, 4), 255)
    loss, _ = segmentation_loss(logits, label)
    assert loss.item() == 0.0
    loss.backward()  # an all-ignored crop still back-propagates (zero gradient)
    label[0, 0, 0] = 2
    loss, _ = segmentation_loss(logits, label)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:, :, 0, 0], torch.tensor([2])).item())


def test_slide_inference_equals_whole_for_a_pointwise_model():
    class Pointwise(torch.nn.Module):  # a 1×1 conv: windows must reproduce the whole-image logits
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x)

    m = Pointwise()
    x = torch.randn(2, 3, 50, 70)
    whole = m(x)
    slide = slide_inference(m, x, 4, crop_size=(32, 32), stride=(21, 21))
    torch.testing.assert_close(slide, whole)
    preds = predict_labels(
        m, x, [(50, 70), (40, 60)], [(25, 35), (40, 60)], 4, mode="slide", crop_size=(32, 32), stride=(21, 21)
    )
    assert [tuple(p.shape) for p in preds] == [(25, 35), (40, 60)]
    assert torch.equal(preds[1], whole[1, :, :40, :60].argmax(0))


def _det_inputs():
    images = [torch.rand(3, 90, 120), torch.rand(3, 110, 84)]
    targets = []
    for img in images:
        h, w = img.shape[1:]
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 10:40, 20:60] = 1
        masks[1, 50:80, 5:30] = 1
        targets.append(
            {
                "boxes": torch.tensor([[20.0, 10, 60, 40], [5, 50, 30, 80]]),
                "labels": torch.tensor([1, 3]),
                "masks": masks,
            }
        )
    return images, targets


@pytest.mark.parametrize(
    "kind,backbone,kwargs",
    [
        ("maskrcnn", "soft_norm_mini", {"max_landmarks": 16}),
        ("retinanet", "poolformer_mini", {}),
    ],
)
def test_detector_forward_backward_and_predict(kind, backbone, kwargs):
    model = build_detector(
        kind, backbone, num_classes=3, min_size=96, max_size=160, anchor_base=16, fpn_channels=32, **kwargs
    )
    strides = (4, 8, 16, 32) if kind == "maskrcnn" else (8, 16, 32)
    assert model.backbone.strides == strides
    images, targets = _det_inputs()
    model.train()
    losses = model(images, targets)
    expected = (
        {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        if kind == "maskrcnn"
        else {"classification", "bbox_regression"}
    )
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert _grad_reaches_backbone(model)
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused  # DDP needs every parameter in the graph
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, img in zip(out, images, strict=False):
        assert o["boxes"].shape[1] == 4 and len(o["scores"]) == len(o["labels"]) == len(o["boxes"])
        if kind == "maskrcnn":
            assert o["masks"].shape[1:] == (1, *img.shape[1:])  # pasted back at the input size


def test_retinanet_extra_levels_come_from_c5():
    model = build_detector("retinanet", "poolformer_s12", num_classes=2, min_size=64, max_size=96, fpn_channels=32)
    feats = model.backbone(torch.randn(1, 3, 64, 96))
    assert list(feats) == ["0", "1", "2", "p6", "p7"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    assert model.backbone.fpn.extra_blocks.p6.in_channels == 512  # on C5 (mmdet's add_extra_convs='on_input')


def test_backbone_loads_a_classification_checkpoint(tmp_path):
    from sofa.checkpoint import save_weights

    cls_model = sofa.create_model("poolformer_s12", num_classes=7)
    path = tmp_path / "cls.safetensors"
    save_weights(path, cls_model.state_dict())
    ref = cls_model.state_dict()

    det = build_detector("maskrcnn", "poolformer_s12", num_classes=2, backbone_checkpoint=str(path), fpn_channels=32)
    body = det.backbone.body.state_dict()
    k = "model.stages.2.blocks.3.mlp.fc1.weight"
    assert torch.equal(body[k], ref[k[len("model.") :]])

    seg = build_segmentor("poolformer_s12", 3, backbone_checkpoint=str(path), **SMALL)
    enc = seg.net.encoder.model.state_dict()
    assert torch.equal(enc[k], ref[k[len("model.") :]])
    # a fresh model differs, so the equality above is the checkpoint's doing
    fresh = build_segmentor("poolformer_s12", 3, **SMALL).net.encoder.model.state_dict()
    assert not torch.equal(fresh[k], ref[k[len("model.") :]])


def test_features_of_a_plain_timm_model_work_too():
    f = create_features("resnet18")
    assert f.feature_info.reduction() == [2, 4, 8, 16, 32]
    det = build_detector("retinanet", "resnet18", num_classes=2, min_size=64, max_size=96, fpn_channels=32)
    assert det.backbone.in_channels_list == [128, 256, 512]


def test_highres_check_runs_a_case(tmp_path):
    import json

    from sofa.dense.highres import main, parse_case

    assert parse_case("soft_norm_tiny:max_landmarks=49,newton_iters=10") == (
        "soft_norm_tiny",
        {"max_landmarks": 49, "newton_iters": 10},
    )
    out = tmp_path / "r.json"  # each case runs in a fresh process
    assert main(["--cases", "poolformer_mini", "--height", "64", "--width", "96", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert r["image"] == [64, 96] and r["forward_s"] > 0
    assert r["peak_extra_bytes"] is None or r["peak_extra_bytes"] >= 0
