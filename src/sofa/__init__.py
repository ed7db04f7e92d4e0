"""sofa: SOftmax-Free Attention.

Linear-cost vision backbones whose token mixers need no softmax (SOFT, SeTformer, PoolFormer and hybrids), in one
MetaFormer framework, with training, evaluation, the original projects' checkpoints, dense prediction and
benchmarks. ``import sofa`` registers every model in timm's registry too.

    >>> import sofa
    >>> model = sofa.create_model("soft_tiny", num_classes=10)
"""

__version__ = "0.1.0"

from sofa.runtime import apply_environment, keep_freed_memory  # noqa: E402

apply_environment()  # SOFA_KEEP_FREED_MEMORY=1: keep freed memory for reuse (sofa.runtime.keep_freed_memory)

from sofa.models import create_model, list_models  # noqa: E402  (registers every model, in timm too)

__all__ = ["create_model", "list_models", "keep_freed_memory", "__version__"]
