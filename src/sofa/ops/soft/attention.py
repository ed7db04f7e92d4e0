"""SOFT's low-rank Gaussian-kernel attention on given queries, landmarks and values (no parameters), in two
forms that compute the same numbers to float rounding:

* ``"one_pass"``: the N×m kernel K1 whole, each product once (FLOP counts report it); with autograd a backward
  written out (:class:`_OnePassAttention`) rather than autograd's through each product;
* ``"streamed"`` (inference only): K1 built for one block of tokens at a time in two passes, Σ K1_bᵀ·V_b over
  the blocks, then K1_b·(A⁺·that) block by block, each block rebuilt. One more kernel evaluation (N·m·d), but
  every temporary stays in the cache and no fresh allocation of tens of MB (each page-faulted anew on the CPU)
  is made in the loop: the time stays linear in N at every size.

The plain form to test them against is :func:`sofa.ops.soft.reference.soft_kernel_attention_reference`.
"""

from __future__ import annotations

from typing import Optional

import torch

from sofa import switches
from sofa.ops import numerics
from sofa.ops.common import check_impl, fp32, is_tracing, needs_graph, no_autocast
from sofa.ops.kernels import gaussian_kernel, gaussian_kernel_graph, gaussian_kernel_inplace
from sofa.ops.newton import SOFT_SHIFT, newton_pinv, newton_pinv_graph, pinv_residual

IMPLS = ("streamed", "one_pass", "reference")


def choose_impl(q: torch.Tensor, landmarks: torch.Tensor, v: torch.Tensor) -> str:
    """The ``impl="auto"`` rule: "one_pass" under a graph capture, where autograd records a graph or where the
    ``SOFA_ONE_PASS`` switch is on, "streamed" otherwise."""
    if is_tracing():
        return "one_pass"
    if needs_graph(q, landmarks, v) or switches.ONE_PASS.get():
        return "one_pass"
    return "streamed"


def streams_in_place(q: torch.Tensor) -> bool:
    """Whether a caller may pass ``out=`` (e.g. the query buffer itself) to :func:`soft_kernel_attention`: no
    graph capture runs, no autograd is recording and the buffer is float32."""
    if is_tracing():
        return False
    return not torch.is_grad_enabled() and q.dtype == torch.float32


def soft_kernel_attention(
    q: torch.Tensor,
    landmarks: torch.Tensor,
    v: torch.Tensor,
    iters: int = 20,
    normalized: bool = False,
    batch_alpha: bool = False,
    token_mask: torch.Tensor | None = None,
    landmark_mask: torch.Tensor | None = None,
    return_residual: bool = False,
    q_scale: float = 1.0,
    out: torch.Tensor | None = None,
    chunk_bytes: int | None = None,
    *,
    block_rows: int | None = None,
    impl: str = "auto",
):
    """K1·(A⁺·(K1ᵀ·V)) with K1 = exp(−½ dist²(q·q_scale, L)) and A = exp(−½ dist²(L, L)), in float32.

    Plain SOFT (``normalized=False``): A⁺ by the released plain rule, (A + 0.01·I)⁻¹. SOFT-Norm: the SOFT-Norm
    rule, then A⁺ ← D·A⁺·D with D = diag(Σ_j A_ij)^{−½}. The association costs O(N·m·(d + dv) + m³). With as
    many landmarks as tokens (L = q) and an exact inverse this is exact kernel attention exp(−½ dist²(q, q))·V
    (up to the 0.01 shift of the plain rule). See docs/methods/soft.md, "Newton–Schulz pseudo-inverse".

    Args:
        q: (..., N, d) queries (already scaled by d^{−1/4}, or scaled here by ``q_scale``); may be a strided view.
        landmarks: (..., m, d).
        v: (..., N, dv) values; may be a strided view.
        iters: Newton–Schulz iterations. normalized: the SOFT-Norm rule. batch_alpha: SOFT-Norm's α over the
            whole batch (see :func:`sofa.ops.newton_pinv`).
        token_mask: (..., N), True for real tokens; landmark_mask: (..., m), True for non-empty landmarks.
        return_residual: also return ‖I − P·A⁺‖₁ per matrix (..., ) (P the matrix inverted).
        q_scale: a factor applied to q first.
        out: (..., N, dv) float32, any strides (e.g. the heads of a token-major buffer): receives the result,
            which is then returned. Not with autograd. It may be ``q`` or ``v`` itself on the streamed path
            (each block is written after its kernel block is built, and v is read in the first pass only).
        chunk_bytes: bytes of the streamed path's kernel block (None: the ``SOFA_SOFT_CHUNK_BYTES`` switch, or
            ``numerics.SOFT_CHUNK_BYTES``); block_rows: rows per block instead (tests use small blocks).
        impl: "auto" (:func:`choose_impl`), "streamed" (no autograd), "one_pass" or "reference".

    Returns:
        (..., N, dv) float32 (float64 for float64 inputs), and with ``return_residual`` the residual (...).
    """
    check_impl("soft_kernel_attention", impl, IMPLS)
    graph = is_tracing() or needs_graph(q, landmarks, v)
    if out is not None and graph:
        raise ValueError("soft_kernel_attention: out= is for inference only (no autograd)")
    if impl == "auto":
        impl = choose_impl(q, landmarks, v)
    if impl == "streamed" and graph:
        raise ValueError("soft_kernel_attention: impl='streamed' is for inference only (no autograd)")
    if impl == "reference":
        from sofa.ops.soft.reference import soft_kernel_attention_reference

        result = soft_kernel_attention_reference(
            q, landmarks, v, iters, normalized, batch_alpha, token_mask, landmark_mask, q_scale
        )
        if out is not None:
            result = out.copy_(result)
        if return_residual:
            return result, _landmark_inverse(fp32(landmarks), landmark_mask, iters, normalized, batch_alpha, True)[1]
        return result
    with no_autocast(q):
        q, landmarks, v = fp32(q), fp32(landmarks), fp32(v)
        A_inv, residual, lm = _landmark_inverse(
            landmarks, landmark_mask, iters, normalized, batch_alpha, return_residual
        )
        tm = None if token_mask is None else token_mask.unsqueeze(-1).to(A_inv.dtype)  # (..., N, 1)

        def kernel(i: int, j: int) -> torch.Tensor:  # K1 for tokens i..j, masked
            qb = q[..., i:j, :]
            K = gaussian_kernel(qb * q_scale if q_scale != 1.0 else qb, landmarks)
            if lm is not None:
                K = K * lm if graph else K.mul_(lm)
            if tm is not None:
                K = K * tm[..., i:j, :] if graph else K.mul_(tm[..., i:j, :])
            return K

        N, m = q.shape[-2], landmarks.shape[-2]
        if impl == "one_pass" and graph and not is_tracing() and _OnePassAttention.takes(q, landmarks, v, A_inv):
            result = _OnePassAttention.apply(q, landmarks, v, A_inv, q_scale, lm, tm)
        elif impl == "one_pass":
            K1 = kernel(0, N)
            result = K1 @ (A_inv @ (K1.transpose(-1, -2) @ v))
            if out is not None:
                result = out.copy_(result)
        else:
            batch = max(1, A_inv.numel() // (m * m))
            chunk = chunk_bytes or switches.SOFT_CHUNK_BYTES.get() or numerics.SOFT_CHUNK_BYTES
            spans = (
                numerics.token_spans(N, 1, block_rows, min_rows=1)
                if block_rows
                else numerics.token_spans(N, batch * m * q.element_size(), chunk)
            )
            KtV = None
            for i, j in spans:
                part = kernel(i, j).transpose(-1, -2) @ v[..., i:j, :]
                KtV = part if KtV is None else KtV.add_(part)
            W = A_inv @ KtV  # (..., m, dv)
            if out is None:
                out = torch.empty((*W.shape[:-2], N, W.shape[-1]), dtype=W.dtype, device=W.device)
            for i, j in spans:
                out[..., i:j, :] = kernel(i, j) @ W
            result = out
    return (result, residual) if return_residual else result


def _bmm_shape(t: torch.Tensor) -> torch.Tensor:
    """(..., r, c) → (batch, r, c), the layout ``bmm`` and ``baddbmm`` take."""
    return t.reshape(-1, *t.shape[-2:])


class _OnePassAttention(torch.autograd.Function):
    """out = K1·W with W = A⁺·(K1ᵀ·v), K1 = exp(−½ dist²(s·q, L)) ⊙ (landmark mask) ⊙ (token mask), for autograd,
    with the backward written out. Autograd through the plain products forms the N×m gradient of K1 twice (once
    per product, then their sum), transposes it, and takes the Gaussian kernel's backward from it; here it is
    one GEMM into one buffer and two more reading it:

        ∂W = K1ᵀ·∂out, ∂(K1ᵀv) = A⁺ᵀ·∂W, ∂A⁺ = ∂W·(K1ᵀv)ᵀ, ∂v = K1·∂(K1ᵀv),
        ∂K1 = ∂out·Wᵀ + v·∂(K1ᵀv)ᵀ (the second GEMM accumulates into the first's result),
        P = ∂K1 ⊙ K1, ∂(s·q) = P·L − s·q ⊙ Σ_j P, ∂L = Pᵀ·(s·q) − L ⊙ Σ_i P

    (the masks are 0/1, so P is also ∂K ⊙ K for the unmasked kernel K, whose backward this is: see
    :class:`sofa.ops.kernels._GaussianKernel`). Saved: K1 (N×m) and the small W, K1ᵀv and A⁺, where autograd
    keeps K1 and two N×m temporaries of the kernel. At 65,536 tokens this halved the N×m passes of SOFT's
    training step (docs/benchmarks.md)."""

    @staticmethod
    def takes(q, landmarks, v, A_inv) -> bool:
        """Equal batch shapes and one float dtype (what the in-place kernel takes); else the plain products."""
        return (
            q.shape[:-2] == landmarks.shape[:-2] == v.shape[:-2] == A_inv.shape[:-2]
            and q.dtype == landmarks.dtype == v.dtype == A_inv.dtype
            and q.dtype in (torch.float32, torch.float64)
        )

    @staticmethod
    def forward(ctx, q, landmarks, v, A_inv, q_scale, lm, tm):
        qs = q * q_scale if q_scale != 1.0 else q
        K1 = gaussian_kernel_inplace(qs, landmarks)
        if lm is not None:
            K1.mul_(lm)
        if tm is not None:
            K1.mul_(tm)
        KtV = K1.transpose(-1, -2) @ v  # (..., m, dv)
        W = A_inv @ KtV
        out = K1 @ W
        ctx.q_scale = q_scale
        ctx.save_for_backward(q, landmarks, v, A_inv, K1, KtV, W)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        q, landmarks, v, A_inv, K1, KtV, W = ctx.saved_tensors
        s = ctx.q_scale
        g_out = g_out.to(K1.dtype)
        gW = K1.transpose(-1, -2) @ g_out  # (..., m, dv)
        gKtV = A_inv.transpose(-1, -2) @ gW
        gA = gW @ KtV.transpose(-1, -2) if ctx.needs_input_grad[3] else None
        gv = K1 @ gKtV if ctx.needs_input_grad[2] else None
        P = torch.bmm(_bmm_shape(g_out), _bmm_shape(W).transpose(1, 2))  # ∂K1, then ⊙ K1 in place
        P.baddbmm_(_bmm_shape(v), _bmm_shape(gKtV).transpose(1, 2)).mul_(_bmm_shape(K1))
        gq = gL = None
        qs = _bmm_shape(q * s if s != 1.0 else q)
        L = _bmm_shape(landmarks)
        if ctx.needs_input_grad[0]:
            gq = torch.baddbmm(-qs * P.sum(-1, keepdim=True), P, L).reshape(q.shape)
            if s != 1.0:
                gq = gq.mul_(s)
        if ctx.needs_input_grad[1]:
            gL = torch.baddbmm(-L * P.sum(-2).unsqueeze(-1), P.transpose(1, 2), qs).reshape(landmarks.shape)
        return gq, gL, gv, gA, None, None, None


def _landmark_inverse(landmarks, landmark_mask, iters, normalized, batch_alpha, return_residual):
    """A⁺ of the landmark kernel A = exp(−½ dist²(L, L)) (masked), by the plain or the SOFT-Norm rule (with its
    D·A⁺·D), its residual (or None) and the landmark mask as (..., 1, m) (or None)."""
    A = gaussian_kernel(landmarks, landmarks)  # (..., m, m)
    lm = None
    if landmark_mask is not None:
        lm = landmark_mask.unsqueeze(-2).to(A.dtype)  # (..., 1, m)
        A = A * lm * lm.transpose(-1, -2)
    A_inv = newton_pinv(A, iters, "soft_norm" if normalized else "soft", batch_alpha)
    residual = None
    if return_residual:
        P = A if normalized else A + SOFT_SHIFT * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        residual = pinv_residual(P.detach(), A_inv.detach())
    if normalized:
        A_inv = degree_scaled(A, A_inv)
    return A_inv, residual, lm


def degree_scaled(A: torch.Tensor, A_inv: torch.Tensor) -> torch.Tensor:
    """SOFT-Norm's D·A⁺·D with D = diag(Σ_j A_ij)^{−½}."""
    D = A.sum(-1).clamp_min(1e-12).rsqrt()
    return D.unsqueeze(-1) * A_inv * D.unsqueeze(-2)


def soft_kernel_attention_graph(
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
    """The ``"one_pass"`` form of :func:`soft_kernel_attention` (same arguments) on float32 (or float64) inputs
    in plain tensor operations: no blocks, no in-place writes, no value-dependent branch, no autocast context
    (the caller's). The form captured graphs and TorchScript hold; the same numbers to float rounding."""
    A = gaussian_kernel_graph(landmarks, landmarks)
    K1 = gaussian_kernel_graph(q * q_scale, landmarks)
    if landmark_mask is not None:
        lm = landmark_mask.unsqueeze(-2).to(A.dtype)
        A = A * lm * lm.transpose(-1, -2)
        K1 = K1 * lm
    if token_mask is not None:
        K1 = K1 * token_mask.unsqueeze(-1).to(K1.dtype)
    A_inv = newton_pinv_graph(A, iters, normalized, batch_alpha)
    if normalized:
        A_inv = degree_scaled(A, A_inv)
    return K1 @ (A_inv @ (K1.transpose(-1, -2) @ v))
