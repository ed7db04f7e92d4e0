"""SOFT's kernel attention: the fast forms (:mod:`.attention`) and the plain reference (:mod:`.reference`)."""

from sofa.ops.soft.attention import IMPLS, choose_impl, soft_kernel_attention, streams_in_place
from sofa.ops.soft.reference import soft_kernel_attention_reference

__all__ = ["soft_kernel_attention", "soft_kernel_attention_reference", "choose_impl", "streams_in_place", "IMPLS"]
