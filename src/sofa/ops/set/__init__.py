"""SeT's attention: the streamed forms (:mod:`.attention`, scaling and log domain) and the plain reference
(:mod:`.reference`)."""

from sofa.ops.set.attention import IMPLS, ProjectedFeatures, choose_impl, set_attention, streams_in_place
from sofa.ops.set.reference import set_attention_reference, set_log_plan

__all__ = [
    "set_attention",
    "set_attention_reference",
    "set_log_plan",
    "ProjectedFeatures",
    "choose_impl",
    "streams_in_place",
    "IMPLS",
]
