"""Dense prediction on sofa backbones: semantic segmentation (UperNet, Semantic FPN through
segmentation_models_pytorch), detection and instance segmentation (RetinaNet, Mask R-CNN through torchvision),
their datasets (ADE20K layout, COCO JSON), evaluators (mIoU, COCO mAP) and a synthetic dataset in both formats.

Importing ``sofa.dense`` registers the ``segmentation`` and ``detection`` tasks of ``sofa train`` / ``sofa eval``.
See docs/dense.md.
"""

from sofa.dense import tasks  # noqa: F401  (registers the segmentation and detection tasks)
from sofa.dense.backbones import create_features, timm_encoder_name
from sofa.dense.detection import FeaturePyramidBackbone, build_detector
from sofa.dense.metrics import CocoEvaluator, SegmentationMetric, masks_to_rle
from sofa.dense.segmentation import Segmentor, build_segmentor, predict_labels, slide_inference
from sofa.dense.shapes import write_shapes

__all__ = [
    "build_segmentor",
    "Segmentor",
    "predict_labels",
    "slide_inference",
    "build_detector",
    "FeaturePyramidBackbone",
    "SegmentationMetric",
    "CocoEvaluator",
    "masks_to_rle",
    "write_shapes",
    "create_features",
    "timm_encoder_name",
]
