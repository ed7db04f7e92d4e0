"""Pure tensor functions, no parameters: the numerical core of the softmax-free mixers.

One package per algorithm, each with a plain reference beside its fast forms: :mod:`sofa.ops.soft` (SOFT's
kernel attention), :mod:`sofa.ops.set` (SeT's attention), :mod:`sofa.ops.pool` (PoolFormer's pooling and block);
their building blocks as modules (Gaussian kernels, the Newton–Schulz pseudo-inverse, Sinkhorn, the Nyström
embedding, position filters, the fused MLP, linear layers); the numerical policy in :mod:`sofa.ops.numerics`.
An op with several implementations takes ``impl=`` ("auto" or a named form) and writes its "auto" rule once, in
its ``choose_impl``.

Every function is batched over any leading dimensions and computes in float32 whatever the input dtype
(half-precision inputs are promoted; the result comes back in float32 unless a function says otherwise).
"""

from sofa.ops.kernels import gaussian_kernel, squared_distances, underflow_to_zero
from sofa.ops.newton import newton_pinv, pinv_residual
from sofa.ops.nystrom import inverse_sqrt_psd, nystrom_embedding, spherical_gaussian_kernel
from sofa.ops.pool import metaformer_block, pool_minus_input
from sofa.ops.position import position_filter_1d, position_filter_2d, position_filter_sequence, sequence_positions
from sofa.ops.set import set_attention, set_attention_reference
from sofa.ops.sinkhorn import sinkhorn, sinkhorn_log
from sofa.ops.soft import soft_kernel_attention, soft_kernel_attention_reference

__all__ = [
    "gaussian_kernel",
    "squared_distances",
    "underflow_to_zero",
    "newton_pinv",
    "pinv_residual",
    "inverse_sqrt_psd",
    "nystrom_embedding",
    "spherical_gaussian_kernel",
    "metaformer_block",
    "pool_minus_input",
    "position_filter_1d",
    "position_filter_2d",
    "position_filter_sequence",
    "sequence_positions",
    "sinkhorn",
    "sinkhorn_log",
    "soft_kernel_attention",
    "soft_kernel_attention_reference",
    "set_attention",
    "set_attention_reference",
]
