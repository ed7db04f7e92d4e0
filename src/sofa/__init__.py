"""sofa: SOftmax-Free Attention.

Linear-cost vision backbones whose token mixers need no softmax (SOFT, SeTformer, PoolFormer and hybrids), in one
MetaFormer framework, with training, evaluation, the original projects' checkpoints, dense prediction and
benchmarks. ``import sofa`` registers every model in timm's registry too.

    >>> import sofa
    >>> model = sofa.create_model("soft_tiny", num_classes=10)
"""
__version__ = "0.1.0"

from sofa.models import create_model, list_models  # noqa: E402  (registers every model, in timm too)

__all__ = ["create_model", "list_models", "__version__"]
