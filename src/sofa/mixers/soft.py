"""SOFT attention: a Gaussian kernel made low-rank by Nyström landmarks and a Newton–Schulz pseudo-inverse.

Per head (docs/methods/soft.md): Q = x·W_q / d^{1/4}, K = Q (no key projection), V = x·W_v; landmarks L from Q;
K1 = exp(−½ dist²(Q, L)) (N×m), A = exp(−½ dist²(L, L)) (m×m); out = K1·(A⁺·(K1ᵀ·V)) + DWConv(V). The
association on the right costs O(N·m·d). Kernels, landmarks and iterations run in float32 under autocast.
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
from sofa.ops.soft import soft_kernel_attention, streams_in_place
from sofa.ops.soft.attention import soft_kernel_attention_graph


def bounded_grid(gh: int, gw: int, max_landmarks: Optional[int]) -> Tuple[int, int]:
    """The landmark grid size after bounding: (gh, gw) itself when gh·gw ≤ max_landmarks, else the largest
    grid of about the same aspect ratio with at most max_landmarks cells."""
    if max_landmarks is None or gh * gw <= max_landmarks:
        return gh, gw
    scale = math.sqrt(max_landmarks / (gh * gw))
    mh = max(1, min(gh, int(round(gh * scale))))
    mw = max(1, min(gw, max_landmarks // mh))
    return mh, mw


def strided_landmarks(
    q_tokens: torch.Tensor, weight: torch.Tensor, H: int, W: int, heads: int, max_landmarks: Optional[int]
) -> torch.Tensor:
    """(B, N, h·d) query tokens (unscaled) of an H×W image and the (d, d, r, r) landmark filter → (B, h, m, d)
    landmarks (before LayerNorm and GELU), scaled by d^{−1/4} as the queries are.

    The released layout convolves each head's queries as a d-channel H×W image with one shared r×r stride-r
    filter. Here the tokens are read, without a copy, as one channels-last (B, h·d, H, W) image and convolved
    with the filter repeated per head as a grouped convolution (groups = h): the same sums. Its sizes depend on
    H and W, so torch.fx keeps it one call (``torch.fx.wrap``).
    """
    B, N, C = q_tokens.shape
    d, r = weight.shape[0], weight.shape[-1]
    img = q_tokens.reshape(B, H, W, C).permute(0, 3, 1, 2)
    if H < r or W < r:
        img = F.pad(img, [0, max(0, r - W), 0, max(0, r - H)])
    weight = weight.to(img.dtype)
    L = F.conv2d(img, weight.repeat(heads, 1, 1, 1) if heads > 1 else weight, stride=r, groups=heads)
    grid = bounded_grid(L.shape[-2], L.shape[-1], max_landmarks)
    if grid != (L.shape[-2], L.shape[-1]):
        L = F.adaptive_avg_pool2d(L, grid)
    return L.reshape(B, heads, d, -1).transpose(-1, -2) / d**0.25


def kernel_attention_graph(
    q: torch.Tensor,
    landmarks: torch.Tensor,
    v: torch.Tensor,
    iters: int,
    normalized: bool,
    batch_alpha: bool,
    token_mask: Optional[torch.Tensor],
    landmark_mask: Optional[torch.Tensor],
    q_scale: float,
) -> torch.Tensor:
    """:func:`sofa.ops.soft.attention.soft_kernel_attention_graph` in float32 with autocast off, so that the
    kernels and the Newton iterations stay in float32 as in eager (TorchScript holds no autocast context: there
    it runs as is)."""
    if torch.jit.is_scripting():
        return soft_kernel_attention_graph(
            q, landmarks, v, iters, normalized, batch_alpha, token_mask, landmark_mask, q_scale
        )
    with no_autocast(q):
        q, landmarks, v = fp32(q), fp32(landmarks), fp32(v)
        return soft_kernel_attention_graph(
            q, landmarks, v, iters, normalized, batch_alpha, token_mask, landmark_mask, q_scale
        )


# both depend on sizes, dtypes or devices in Python: torch.fx keeps each one call, run as is
torch.fx.wrap("strided_landmarks")
torch.fx.wrap("kernel_attention_graph")
torch.fx.wrap("fp32")  # reads the dtype: float32 for half precision, float64 kept


class SoftAttention(TokenMixer):
    """SOFT token mixer (plain, or SOFT-Norm with ``normalized=True``).

    Args:
        dim: token channels C.
        num_heads: heads h; ``head_dim`` d defaults to C/h (32 in every released model).
        landmark_stride: r. Images: landmarks from one r×r stride-r convolution of each head's Q laid out as
            a d-channel H×W image (shared by all heads), then LayerNorm(d) and exact GELU: m = ⌊H/r⌋·⌊W/r⌋.
            A grid smaller than r is zero-padded up to r first (so m ≥ 1 at any size).
            Sequences: m = ⌈n/r⌉ landmarks for n real tokens, each the mean of Q over one contiguous segment of
            them (a fixed-weight strided 1-D convolution; no parameters).
        max_landmarks: None for the released stride mode, whose landmark count grows with the input (m = N/r²,
            so the cost is O(N²/r²): quadratic in N). An integer bounds m: the strided landmark grid is
            average-pooled to at most that many cells (7×7 for 49 on square inputs), keeping the cost linear in
            N at any resolution; whenever the grid is already within the bound nothing changes.
        dwconv_kernel: k of the depthwise convolution on V (one k×k filter per head, shared by its d channels);
            0 turns it off. Images only.
        normalized: SOFT-Norm: A⁺ by the SOFT-Norm Newton rule, then A⁺ ← D·A⁺·D with D = diag(ΣA)^{−½}.
        newton_iters: Newton–Schulz iterations (20 as released).
        batch_alpha: SOFT-Norm only: take the Newton α over the whole batch as the released code does (makes
            one image's output depend on its batch; needed only for exact agreement with released weights).
        qkv_bias: biases of the q and v projections.
        sequence_only: build the mixer for sequences alone: no landmark convolution and no depthwise
            convolution, the two parameters only images use (a sequence's landmarks are parameter-free segment
            means), so every parameter takes part in a sequence's forward (as distributed training requires).
            Passing ``hw`` then raises.

    Set ``record_residual = True`` to keep ‖I − A·A⁺‖₁ of the last forward (max over batch and heads) in
    ``last_residual``: 20 iterations do not converge on badly conditioned landmark matrices.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        landmark_stride: int = 8,
        dwconv_kernel: int = 9,
        normalized: bool = False,
        max_landmarks: int | None = None,
        newton_iters: int = 20,
        batch_alpha: bool = False,
        qkv_bias: bool = True,
        sequence_only: bool = False,
    ):
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise ValueError(f"SoftAttention: dim {dim} is not divisible by num_heads {num_heads}")
        head_dim = head_dim or dim // num_heads
        if landmark_stride < 1:
            raise ValueError(f"SoftAttention: landmark_stride must be ≥ 1, got {landmark_stride}")
        if max_landmarks is not None and max_landmarks < 1:
            raise ValueError(f"SoftAttention: max_landmarks must be ≥ 1 or None, got {max_landmarks}")
        if dwconv_kernel and dwconv_kernel % 2 == 0:
            raise ValueError(f"SoftAttention: dwconv_kernel must be odd (or 0), got {dwconv_kernel}")
        if batch_alpha and not normalized:
            raise ValueError("SoftAttention: batch_alpha applies to the normalised (SOFT-Norm) variant only")
        self.num_heads, self.head_dim = num_heads, head_dim
        self.landmark_stride, self.max_landmarks = landmark_stride, max_landmarks
        self.normalized, self.newton_iters, self.batch_alpha = normalized, newton_iters, batch_alpha
        self.sequence_only = sequence_only
        inner = num_heads * head_dim
        self.q = Linear(dim, inner, bias=qkv_bias)
        self.v = Linear(dim, inner, bias=qkv_bias)
        self.landmark = (
            None
            if sequence_only
            else nn.Conv2d(head_dim, head_dim, landmark_stride, stride=landmark_stride, bias=False)
        )
        self.landmark_norm = nn.LayerNorm(head_dim)
        self.dwconv = (
            nn.Conv2d(num_heads, num_heads, dwconv_kernel, padding=dwconv_kernel // 2, groups=num_heads, bias=False)
            if dwconv_kernel and not sequence_only
            else None
        )
        self.proj = Linear(inner, dim)
        self.record_residual = False
        self.last_residual: torch.Tensor | None = None

    # landmarks ------------------------------------------------------------------------------------------------
    def image_landmarks(self, q_tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(B, N, h·d) query tokens (unscaled) → (B, h, m, d) landmarks (:func:`strided_landmarks`)."""
        weight = self.landmark.weight if self.landmark is not None else q_tokens.new_zeros(0)
        return strided_landmarks(q_tokens, weight, H, W, self.num_heads, self.max_landmarks)

    def sequence_landmarks(self, q: torch.Tensor, mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, h, N, d) → landmarks (B, h, m, d) as segment means over the real tokens, and (B, m) validity.

        Each sequence gets ⌈n_valid/r⌉ landmarks (at most ``max_landmarks``) from its own real tokens, so a
        sequence gives the same output whatever it is padded to.
        """
        B, h, N, d = q.shape
        valid = q.new_ones(B, N) if mask is None else mask.to(q.dtype)
        n_valid = valid.sum(-1, keepdim=True).clamp_min(1.0)  # (B, 1)
        m_each = torch.ceil(n_valid / self.landmark_stride)
        if self.max_landmarks is not None:
            m_each = m_each.clamp_max(self.max_landmarks)
        m = int(m_each.max().item())
        rank = valid.cumsum(-1) - valid
        segment = torch.floor(rank * m_each / n_valid).clamp_max(m - 1).long()  # (B, N)
        # segment sums by index_add over the tokens of all sequences at once (sequence b's segments are rows
        # b·m ... b·m + m − 1): O(N·h·d), where a one-hot (N, m) matrix product costs N·m·h·d and N·m memory
        rows = (segment + torch.arange(B, device=q.device)[:, None] * m).reshape(-1)
        tokens = (q * valid[:, None, :, None]).transpose(1, 2).reshape(B * N, h * d)
        sums = q.new_zeros(B * m, h * d).index_add_(0, rows, tokens)
        counts = q.new_zeros(B * m).index_add_(0, rows, valid.reshape(-1)).reshape(B, m)
        L = sums.reshape(B, m, h, d).transpose(1, 2) / counts.clamp_min(1.0)[:, None, :, None]
        return L, counts > 0

    # forward ---------------------------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Images and sequences alike: queries, values and landmarks (:meth:`landmarks`), then
        :func:`sofa.ops.soft.soft_kernel_attention`, then for images the depthwise convolution on V.

        Images are laid out for speed: the landmark convolution reads the query tokens as a channels-last image
        (no per-head copy), the depthwise convolution reads and writes the token layout, and without autograd
        the kernel is streamed over blocks of tokens with the result written straight into the queries'
        token-major buffer (each block after its kernel block is built from them), to which the convolution is
        added in place: no temporary of N·m or N·C floats (on the CPU every large fresh tensor also costs its
        page faults). Under a graph capture and in TorchScript it is :meth:`forward_graph`."""
        if torch.jit.is_scripting():
            return self.forward_graph(x, hw, mask)
        if is_tracing():
            return self.forward_graph(x, hw, mask)
        self.check_input(x, hw, mask)
        if hw is not None and self.sequence_only:
            raise ValueError(
                "SoftAttention: this mixer was built with sequence_only=True (no landmark "
                "convolution): it mixes sequences only, pass no hw"
            )
        v_tokens = self.v(x)
        q_tokens = self.q(x)
        inplace = hw is not None and streams_in_place(q_tokens)
        with no_autocast(x):
            q, L, q_scale, token_mask, landmark_mask = self.landmarks(q_tokens, hw, mask)
            v = fp32(split_heads(v_tokens, self.num_heads))
            result = soft_kernel_attention(
                q,
                L,
                v,
                self.newton_iters,
                self.normalized,
                self.batch_alpha,
                token_mask=token_mask,
                landmark_mask=landmark_mask,
                return_residual=self.record_residual,
                q_scale=q_scale,
                out=q if inplace else None,
            )
            out = self._keep_residual(result)
        out = (q_tokens if inplace else merge_heads(out)).to(v_tokens.dtype)
        if hw is not None and self.dwconv is not None:
            dw = self._dwconv(v_tokens, *hw)
            out = out.add_(dw) if inplace else out + dw
        return zero_padded(self.proj(out), mask)

    def forward_graph(
        self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """:meth:`forward` in the plain form captured graphs and TorchScript hold, with the same numbers: the
        one-pass kernel (:func:`kernel_attention_graph`), no buffer written in place, no residual recorded."""
        self.check_input(x, hw, mask)
        torch._assert(hw is None or not self.sequence_only, "SoftAttention: sequence_only mixes sequences only")
        q_tokens = self.q(x)  # q before v: torch.fx lists the parameters in the order they are used
        v_tokens = self.v(x)
        q, L, q_scale, token_mask, landmark_mask = self.landmarks(q_tokens, hw, mask)
        v = fp32(split_heads(v_tokens, self.num_heads))
        out = kernel_attention_graph(
            q, L, v, self.newton_iters, self.normalized, self.batch_alpha, token_mask, landmark_mask, q_scale
        )
        out = merge_heads(out).to(v_tokens.dtype)
        if hw is not None and self.dwconv is not None:
            out = out + self._dwconv(v_tokens, hw[0], hw[1])
        return zero_padded(self.proj(out), mask)

    def landmarks(
        self, q_tokens: torch.Tensor, hw: Optional[Tuple[int, int]], mask: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, float, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The queries as (B, h, N, d) heads in float32 (float64 kept), the landmarks (B, h, m, d) after LayerNorm
        and GELU, the query scale left to the kernel, and the token and landmark masks ((B, h, N), (B, h, m) or
        None).

        Images: landmarks from the strided convolution of the unscaled query tokens (:meth:`image_landmarks`),
        the queries' d^{−1/4} applied inside the kernel. Sequences: the queries scaled first, landmarks as
        segment means over the real tokens (:meth:`sequence_landmarks`)."""
        h, d = self.num_heads, self.head_dim
        if hw is not None:
            L = self._landmark_act(self.image_landmarks(fp32(q_tokens), hw[0], hw[1]))
            return fp32(split_heads(q_tokens, h)), L, d**-0.25, None, None
        q = fp32(split_heads(q_tokens, h)) / d**0.25
        L, l_valid = self.sequence_landmarks(q, mask)
        token_mask = None if mask is None else mask[:, None, :].expand(-1, h, -1)
        return q, self._landmark_act(L), 1.0, token_mask, l_valid[:, None, :].expand(-1, h, -1)

    def _landmark_act(self, L: torch.Tensor) -> torch.Tensor:
        d = self.head_dim
        return F.gelu(
            F.layer_norm(
                L,
                [d],
                self.landmark_norm.weight.to(L.dtype),
                self.landmark_norm.bias.to(L.dtype),
                self.landmark_norm.eps,
            )
        )

    def _keep_residual(self, result):
        out, residual = result if self.record_residual else (result, None)
        if residual is not None:
            self.last_residual = residual.max()
        return out

    def _dwconv(self, v_tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The per-head k×k filter on V, as one depthwise convolution over all h·d channels (each head's
        filter repeated for its d channels): the same arithmetic as the released (B·d, h, H, W) layout. The
        tokens (B, N, C) are read as a channels-last (B, C, H, W) image and the result comes back in the token
        layout, so no transposed copy is made either way."""
        B, N, C = v_tokens.shape
        weight = self.dwconv.weight.repeat_interleave(self.head_dim, dim=0).to(v_tokens.dtype)  # (h·d, 1, k, k)
        img = v_tokens.reshape(B, H, W, C).permute(0, 3, 1, 2)
        y = F.conv2d(img, weight, padding=self.dwconv.padding, groups=C)
        return y.permute(0, 2, 3, 1).reshape(B, N, C)

    def num_landmarks(self, hw) -> int:
        """m for an H×W input (stride mode grows with the input; bounded mode stops at max_landmarks)."""
        H, W = hw
        r = self.landmark_stride
        gh, gw = max(H, r) // r, max(W, r) // r
        mh, mw = bounded_grid(gh, gw, self.max_landmarks)
        return mh * mw

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, head_dim={self.head_dim}, landmark_stride={self.landmark_stride}, "
            f"max_landmarks={self.max_landmarks}, normalized={self.normalized}, newton_iters={self.newton_iters}"
            + (", sequence_only=True" if self.sequence_only else "")
        )
