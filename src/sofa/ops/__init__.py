"""Pure tensor functions, no parameters: the numerical core of the softmax-free mixers.

Every function is batched over any leading dimensions and computes in float32 whatever the input dtype
(half-precision inputs are promoted; the result comes back in float32 unless a function says otherwise).
"""
from sofa.ops.kernels import gaussian_kernel, squared_distances, underflow_to_zero
from sofa.ops.newton import newton_pinv, pinv_residual
from sofa.ops.nystrom import inverse_sqrt_psd, nystrom_embedding, spherical_gaussian_kernel
from sofa.ops.position import position_filter_1d, position_filter_2d, position_filter_sequence, sequence_positions
from sofa.ops.set import set_attention
from sofa.ops.sinkhorn import sinkhorn, sinkhorn_log
from sofa.ops.soft import soft_kernel_attention

__all__ = [
    "gaussian_kernel",
    "squared_distances",
    "underflow_to_zero",
    "newton_pinv",
    "pinv_residual",
    "inverse_sqrt_psd",
    "nystrom_embedding",
    "spherical_gaussian_kernel",
    "position_filter_1d",
    "position_filter_2d",
    "position_filter_sequence",
    "sequence_positions",
    "sinkhorn",
    "sinkhorn_log",
    "soft_kernel_attention",
    "set_attention",
]
