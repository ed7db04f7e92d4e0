"""SeT attention (self-optimal transport; docs/methods/setformer.md): tokens matched to a learned reference set
by Sinkhorn.

Per head: features f = x·W_f and values u = x·W_u; the Nyström embedding ψ(f) ∈ R^k (Gaussian kernel on the
sphere with k learned unit-norm anchors); scores ψ(f_i)·y_j against a learned reference Y ∈ R^{m×k}; the
entropic OT plan T (log-domain Sinkhorn, ε, rows 1/n, columns 1/m) multiplied by a position filter M; the
references collect tokens, A = colnorm(T)ᵀ·u, and every token reads them back, out = rownorm(T)·A. The implied
token-to-token attention rownorm(T)·colnorm(T)ᵀ is non-negative, rows sum to 1, rank ≤ m; cost O(n·m·(k+d)).

Choices where the paper is silent (see docs/methods/setformer.md, "Choices where the paper is silent"): two
projections (features and values); the row and column normalisations of T⊙M are done in the log domain (log T + log
M normalised), which is the same arithmetic without underflow; the depthwise 3×3 local term on u (CSWin's LePE) is
added after merging heads, before the output projection, as in CSWin; images only.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sofa.layers import Linear
from sofa.mixers.base import TokenMixer, merge_heads, split_heads, zero_padded
from sofa.ops.common import fp32, is_tracing, no_autocast
from sofa.ops.position import GridFilter, SequenceFilter, position_filter_sequence
from sofa.ops.set import ProjectedFeatures, set_attention, set_log_plan, streams_in_place
from sofa.ops.set.graph import grid_log_filter, set_attention_graph


def reference_grid(m: int) -> tuple[int, int]:
    side = math.isqrt(m)
    if side * side != m:
        raise ValueError(f"SeTAttention: images need a square reference grid, so num_refs must be a square; got {m}")
    return side, side


@torch.fx.wrap
def mix_set(mixer: SeTAttention, x: torch.Tensor, u_tokens: torch.Tensor, lepe, hw, mask) -> torch.Tensor:
    """SeT's attention of ``mixer`` on tokens x with values ``u_tokens`` = u(x), plus the local term ``lepe``
    (None: none), before the output projection: (B, N, C). A leaf under torch.fx (it chooses its path from the
    tensors' dtypes and grad mode)."""
    h = mixer.num_heads
    log_m = mixer.position_filter(x, hw, mask)
    inplace = streams_in_place(u_tokens)
    if inplace:
        # without autograd the features are projected block by block inside set_attention (never a whole map)
        # and the result overwrites the values: set_attention reads all of them before it writes its first
        # block. Two buffers of the token map's size fewer are allocated.
        f = ProjectedFeatures(x, mixer.f.weight, mixer.f.bias, h)
    else:
        f = split_heads(mixer.f(x), h)
    with no_autocast(x):
        values = fp32(split_heads(u_tokens, h))
        out = set_attention(
            f,
            mixer.anchors,
            mixer.reference,
            values,
            mixer.sigma,
            mixer.eps,
            mixer.sinkhorn_iters,
            log_m,
            mask,
            out=values if inplace else None,
        )
    out = (u_tokens if inplace else merge_heads(out)).to(u_tokens.dtype)
    if lepe is not None:
        out = out.add_(lepe) if inplace else out + lepe
    return out


class SeTAttention(TokenMixer):
    """SeT token mixer.

    Args:
        dim: channels C; num_heads: h (d = C/h).
        num_refs: m, the reference size (49 = 7×7 for images: the reference sits on a √m×√m grid).
        num_anchors: k, Nyström anchors per head. sigma: the kernel's bandwidth on the sphere.
        eps: Sinkhorn's entropic regularisation ε. sinkhorn_iters: its iterations.
        tau: τ of the position filter (None or 0 turns it off).
        lepe: add a depthwise 3×3 convolution of u (images).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_refs: int = 49,
        num_anchors: int = 32,
        eps: float = 0.1,
        sinkhorn_iters: int = 5,
        tau: float | None = 0.1,
        sigma: float = 0.5,
        qkv_bias: bool = True,
        lepe: bool = True,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SeTAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.num_refs, self.num_anchors = num_refs, num_anchors
        self.eps, self.sinkhorn_iters, self.tau, self.sigma = eps, sinkhorn_iters, tau, sigma
        self.f = Linear(dim, dim, bias=qkv_bias)
        self.u = Linear(dim, dim, bias=qkv_bias)
        self.anchors = nn.Parameter(F.normalize(torch.randn(num_heads, num_anchors, self.head_dim), dim=-1))
        self.reference = nn.Parameter(torch.randn(num_heads, num_refs, num_anchors) / math.sqrt(num_anchors))
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if lepe else None
        self.proj = Linear(dim, dim)

    def position_filter(self, x: torch.Tensor, hw=None, mask=None):
        """The log position filter: a :class:`~sofa.ops.position.GridFilter` for images, a
        :class:`~sofa.ops.position.SequenceFilter` for sequences (both built block by block, never whole; under a
        graph capture, whose symbolic sizes their index arithmetic would not export, dense: (n, m) for images,
        (B, 1, n, m) for sequences), None without one (``tau`` None or 0)."""
        if not self.tau:
            return None
        if hw is not None and is_tracing():
            return grid_log_filter(hw, reference_grid(self.num_refs), self.tau, x.device)  # dense (n, m)
        if hw is not None:
            return GridFilter(hw, reference_grid(self.num_refs), self.tau, x.device)  # the (n, m) filter's factors
        if not is_tracing():
            return SequenceFilter(mask, self.num_refs, self.tau, n=x.shape[1], device=x.device)
        valid = torch.ones(x.shape[:2], device=x.device) if mask is None else mask
        return position_filter_sequence(valid, self.num_refs, self.tau, log=True)[:, None]

    def log_plan(self, x: torch.Tensor, hw=None, mask=None) -> torch.Tensor:
        """log(T ⊙ M), (B, h, n, m), float32: the filtered transport plan of every head
        (:func:`sofa.ops.set.set_log_plan`; quadratic memory, for tests and plots)."""
        f = split_heads(self.f(x), self.num_heads)
        with no_autocast(x):
            return set_log_plan(
                f.float(),
                self.anchors.float(),
                self.reference.float(),
                self.sigma,
                self.eps,
                self.sinkhorn_iters,
                self.position_filter(x, hw, mask),
                mask,
            )

    def attention(self, x: torch.Tensor, hw=None, mask=None) -> torch.Tensor:
        """The implied token-to-token attention rownorm(T)·colnorm(T)ᵀ, (B, h, n, n): for tests and plots only
        (it is quadratic in n)."""
        log_t = self.log_plan(x, hw, mask)
        return torch.softmax(log_t, -1) @ torch.softmax(log_t, -2).transpose(-1, -2)

    def forward(
        self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The same arithmetic as ``log_plan`` followed by the two normalisations (see ``attention``), streamed
        over blocks of tokens by :func:`sofa.ops.set_attention`: time linear in n, one n×m matrix per head
        (K̃ without autograd, log K with it) and no other n×m temporary. TorchScript compiles
        :meth:`forward_graph` instead."""
        if torch.jit.is_scripting():
            return self.forward_graph(x, hw, mask)
        else:
            return self.forward_streamed(x, hw, mask)

    def forward_graph(
        self, x: torch.Tensor, hw: Optional[Tuple[int, int]], mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The whole (n, m) plan in plain tensor operations (:func:`sofa.ops.set.set_attention_graph`)."""
        self.assert_input(x, hw, mask)
        h = self.num_heads
        u_tokens = self.u(x)
        log_m: Optional[torch.Tensor] = None
        tau = self.tau
        if tau is not None and tau > 0:
            if hw is not None:
                side = int(math.sqrt(self.num_refs))
                log_m = grid_log_filter(hw, (side, side), tau, x.device)
            else:
                valid = torch.ones(x.shape[:2], device=x.device) if mask is None else mask
                log_m = position_filter_sequence(valid, self.num_refs, tau, log=True)[:, None]
        values = split_heads(u_tokens, h)
        out = set_attention_graph(
            split_heads(self.f(x), h),
            self.anchors,
            self.reference,
            values,
            self.sigma,
            self.eps,
            self.sinkhorn_iters,
            log_m,
            mask,
        )
        out = merge_heads(out).to(u_tokens.dtype)
        lepe = self.local_term(u_tokens, hw)
        if lepe is not None:
            out = out + lepe
        return zero_padded(self.proj(out), mask)

    @torch.jit.unused
    def forward_streamed(
        self, x: torch.Tensor, hw: Optional[Tuple[int, int]], mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The streamed form (:func:`mix_set`)."""
        if not is_tracing():
            self.check_input(x, hw, mask)
        if hw is not None:
            reference_grid(self.num_refs)  # images need a square reference grid
        u_tokens = self.u(x)
        out = mix_set(self, x, u_tokens, self.local_term(u_tokens, hw), hw, mask)
        return zero_padded(self.proj(out), mask)

    def local_term(self, u_tokens: torch.Tensor, hw: Optional[Tuple[int, int]]) -> Optional[torch.Tensor]:
        """The depthwise 3×3 convolution of the values on the image grid, (B, N, C); None for sequences or
        without ``lepe``. The tokens are read as a channels-last image and the result goes back to the token
        layout without copies."""
        if hw is None or self.lepe is None:
            return None
        B, N, C = u_tokens.shape
        lepe = self.lepe(u_tokens.reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return lepe.reshape(B, N, C)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, refs={self.num_refs}, anchors={self.num_anchors}, eps={self.eps}, "
            f"sinkhorn_iters={self.sinkhorn_iters}, tau={self.tau}, sigma={self.sigma}"
        )
