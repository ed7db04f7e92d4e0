"""The model zoo: SOFT, SeTformer and PoolFormer (with hybrids), the LRA sequence classifiers and the
text encoders, by name.

    >>> import sofa
    >>> model = sofa.create_model("soft_tiny", num_classes=10)
    >>> sofa.list_models("poolformer_*")

Importing this package registers every model in sofa's registry and in timm's (``timm.create_model`` works
too; names timm already owns get a ``sofa_`` prefix there).
"""

from sofa.models import lra, poolformer, setformer, soft, text  # noqa: F401  (register their variants)
from sofa.models.registry import (
    create_model,
    family_of,
    get_entry,
    list_models,
    map_checkpoint,
    register_in_timm,
    timm_name,
)

register_in_timm()

__all__ = ["create_model", "list_models", "get_entry", "family_of", "timm_name", "register_in_timm", "map_checkpoint"]
