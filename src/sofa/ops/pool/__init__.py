"""PoolFormer: the pooling mixer (:mod:`.pooling`) and the MetaFormer block with GroupNorm(1) in its fused,
folded and textbook forms (:mod:`.block`; the textbook form, the reference, in :mod:`.reference`)."""

from sofa.ops.pool.block import IMPLS, BlockWeights, choose_impl, metaformer_block, metaformer_block_folded
from sofa.ops.pool.pooling import pool_minus_input, pool_minus_input_sequence
from sofa.ops.pool.reference import metaformer_block_reference

__all__ = [
    "pool_minus_input",
    "pool_minus_input_sequence",
    "metaformer_block",
    "metaformer_block_folded",
    "metaformer_block_reference",
    "BlockWeights",
    "choose_impl",
    "IMPLS",
]
