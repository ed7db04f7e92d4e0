"""The numerical core against independent slow references: torch.linalg.pinv, exact kernel attention, POT."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from sofa.ops import (
    gaussian_kernel,
    inverse_sqrt_psd,
    newton_pinv,
    nystrom_embedding,
    pinv_residual,
    position_filter_1d,
    position_filter_2d,
    sinkhorn,
    soft_kernel_attention,
    spherical_gaussian_kernel,
    squared_distances,
)
from sofa.ops.newton import GRAD_ITERS

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def kernel_matrix_with_condition(target: float, m: int = 16, d: int = 8, seed: int = 0) -> torch.Tensor:
    """A Gaussian-kernel matrix exp(−½ dist²) of m points whose condition number is close to ``target``
    (found by bisection on the spread of the points), float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g, dtype=torch.float64)
    lo, hi = 1e-3, 10.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        cond = torch.linalg.cond(gaussian_kernel(x * mid, x * mid)).item()
        lo, hi = (lo, mid) if cond < target else (mid, hi)
    return gaussian_kernel(x * hi, x * hi)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# --- Gaussian kernel -------------------------------------------------------------------------------------------
def test_squared_distances_match_cdist_and_are_never_negative():
    a, b = torch.randn(3, 20, 8), torch.randn(3, 11, 8)
    torch.testing.assert_close(
        squared_distances(a, b), torch.cdist(a.double(), b.double()).pow(2).float(), atol=1e-4, rtol=1e-4
    )
    same = torch.randn(50, 32) * 100  # rounding makes |a|²+|a|²−2a·a slightly negative without the clamp
    assert (squared_distances(same, same) >= 0).all()


def test_gaussian_kernel_values_and_no_subnormals():
    a, b = torch.randn(2, 30, 4), torch.randn(2, 7, 4)
    ref = torch.exp(-0.5 * torch.cdist(a.double(), b.double()).pow(2))
    torch.testing.assert_close(gaussian_kernel(a, b).double(), ref, atol=1e-6, rtol=1e-5)
    far = torch.linspace(0, 14, 200)[:, None]  # distances whose exp(−½d²) spans the subnormal range
    k = gaussian_kernel(far, torch.zeros(1, 1))
    subnormal = (k != 0) & (k.abs() < SMALLEST_NORMAL)
    assert not subnormal.any()
    assert gaussian_kernel(torch.randn(4, 8).half(), torch.randn(3, 8).half()).dtype == torch.float32


@pytest.mark.parametrize("shape", [(), (2, 3)])
def test_gaussian_kernel_backward_equals_autograd_through_the_plain_form(shape):
    """The written-out backward (training) against autograd through exp(−½·dist²) op by op, float64, with
    near points, far points whose entries underflow to zero, and a landmark equal to a token."""
    from sofa.ops.kernels import gaussian_kernel_graph

    g = torch.Generator().manual_seed(0)
    a = torch.randn(*shape, 40, 8, dtype=torch.float64, generator=g)
    b = torch.randn(*shape, 6, 8, dtype=torch.float64, generator=g)
    a[..., :5, :] *= 6.0  # far from every b: some entries are exact zeros
    b[..., 0, :] = a[..., 7, :]  # distance zero: the clamp's corner
    a.requires_grad_(True)
    b.requires_grad_(True)
    G = torch.randn(*shape, 40, 6, dtype=torch.float64, generator=g)
    K = gaussian_kernel(a, b)
    assert type(K.grad_fn).__name__ == "_GaussianKernelBackward" and (K == 0).any()
    torch.testing.assert_close(K, gaussian_kernel_graph(a, b))
    got = torch.autograd.grad((K * G).sum(), (a, b))
    want = torch.autograd.grad((gaussian_kernel_graph(a, b) * G).sum(), (a, b))
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(gaussian_kernel, (a[..., 5:, :].detach().requires_grad_(), b), eps=1e-6)


# --- Newton–Schulz ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cond", [10.0, 100.0, 300.0])
def test_newton_soft_rule_matches_pinv_of_shifted_matrix_in_20_iterations(cond):
    A = kernel_matrix_with_condition(cond)
    ref = torch.linalg.pinv(A + 0.01 * torch.eye(A.shape[0], dtype=A.dtype))
    assert rel_err(newton_pinv(A.float(), 20, "soft"), ref) < 1e-3


@pytest.mark.parametrize("cond", [10.0, 100.0, 1000.0])
def test_newton_converges_to_pinv_given_enough_iterations(cond):
    """At condition numbers near 1e3 the released α needs more than 20 iterations (the error after k is about
    exp(−2^k·1.8/κ²)); given enough, both rules reach 1e-6 (in float64) and the residual says so."""
    A = kernel_matrix_with_condition(cond)
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    V, res = newton_pinv(A, 40, "soft", return_residual=True)
    assert rel_err(V, torch.linalg.pinv(A + 0.01 * eye)) < 1e-6
    assert res.item() < 1e-6
    V = newton_pinv(A, 50, "soft_norm")
    assert rel_err(V, torch.linalg.pinv(A)) < 1e-6


def test_newton_residual_flags_non_convergence():
    A = kernel_matrix_with_condition(1e5, m=49, d=32)
    _, res20 = newton_pinv(A.float(), 20, "soft", return_residual=True)
    _, res40 = newton_pinv(A, 40, "soft", return_residual=True)  # float64: no rounding floor
    assert res20.item() > 1e-2 and res40.item() < 1e-6


def test_newton_soft_backward_is_the_exact_inverse_gradient():
    """float64 gradcheck: the custom backward (−Vᵀ·G·Vᵀ) against finite differences of the converged forward."""
    A = kernel_matrix_with_condition(5.0, m=6, d=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: newton_pinv(a, 40, "soft"), (A,), eps=1e-6, atol=1e-5)
    # and the same gradient as back-propagating through torch.linalg.inv of the shifted matrix
    G = torch.randn(6, 6, dtype=torch.float64)
    (g_newton,) = torch.autograd.grad((newton_pinv(A, 40, "soft") * G).sum(), A)
    (g_exact,) = torch.autograd.grad((torch.linalg.inv(A + 0.01 * torch.eye(6, dtype=A.dtype)) * G).sum(), A)
    torch.testing.assert_close(g_newton, g_exact, atol=1e-8, rtol=1e-6)


def test_newton_soft_norm_gradient_flows_through_iterations():
    A = kernel_matrix_with_condition(5.0, m=6, d=3).requires_grad_(True)
    for backward in ("auto", "full"):
        fn = functools.partial(newton_pinv, iters=20, rule="soft_norm", backward=backward)
        assert torch.autograd.gradcheck(fn, (A,), eps=1e-6, atol=1e-5)


def _newton_steps_in_graph(V: torch.Tensor) -> int:
    """How many batched GEMMs of Newton steps autograd's graph of V holds (two per step)."""
    seen, todo, count = set(), [V.grad_fn], 0
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        count += type(fn).__name__ in ("BmmBackward0", "BaddbmmBackward0")
        todo += [f for f, _ in fn.next_functions]
    return count // 2


@pytest.mark.parametrize("cond, truncated", [(3.0, True), (1e5, False)])
def test_newton_soft_norm_backward_through_the_last_steps_equals_the_whole_graph(cond, truncated):
    """Converged (κ = 3), the graph holds the last GRAD_ITERS steps and the gradient is autograd's through all
    20 to float rounding; not converged after 20 steps (κ = 1e5), the whole graph is kept."""
    A = kernel_matrix_with_condition(cond, m=32, d=8).float()
    A = torch.stack([A, A.flip(0, 1)]).requires_grad_(True)
    G = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(0))
    V_auto, V_full = (newton_pinv(A, 20, "soft_norm", backward=b) for b in ("auto", "full"))
    assert _newton_steps_in_graph(V_full) == 20
    assert _newton_steps_in_graph(V_auto) == (GRAD_ITERS if truncated else 20)
    torch.testing.assert_close(V_auto, V_full, rtol=1e-5, atol=1e-6)
    (g_auto,) = torch.autograd.grad((V_auto * G).sum(), A)
    (g_full,) = torch.autograd.grad((V_full * G).sum(), A)
    assert rel_err(g_auto, g_full) < 1e-5


def test_newton_batch_alpha_couples_the_batch_and_per_matrix_alpha_does_not():
    small = kernel_matrix_with_condition(30.0, m=8, d=4)
    big = gaussian_kernel(torch.zeros(8, 4, dtype=torch.float64), torch.zeros(8, 4, dtype=torch.float64)) + small
    alone = newton_pinv(small[None], 20, "soft_norm")
    batched = newton_pinv(torch.stack([small, big]), 20, "soft_norm")
    torch.testing.assert_close(batched[0:1], alone)  # per-matrix α: independent of the batch
    alone_b = newton_pinv(small[None], 20, "soft_norm", batch_alpha=True)
    batched_b = newton_pinv(torch.stack([small, big]), 20, "soft_norm", batch_alpha=True)
    assert (batched_b[0] - alone_b[0]).abs().max() > 1e-3  # batch-wide α: the big matrix changes the small one's


def test_newton_runs_in_fp32_under_autocast_and_rejects_bad_input():
    A = kernel_matrix_with_condition(10.0).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        V = newton_pinv(A.bfloat16(), 20)
    assert V.dtype == torch.float32 and torch.isfinite(V).all()
    with pytest.raises(ValueError, match="square"):
        newton_pinv(torch.randn(3, 4))
    with pytest.raises(ValueError, match="rule"):
        newton_pinv(A, rule="nope")


def test_pinv_residual_is_zero_for_exact_inverse():
    A = kernel_matrix_with_condition(10.0)
    assert pinv_residual(A, torch.linalg.inv(A)).item() < 1e-4


# --- SOFT's low-rank form ------------------------------------------------------------------------------------------
def test_soft_low_rank_form_with_all_tokens_as_landmarks_is_exact_kernel_attention():
    torch.manual_seed(1)
    q = torch.randn(2, 3, 40, 16) * 0.35  # a kernel matrix with a moderate condition number
    v = torch.randn(2, 3, 40, 8)
    exact = torch.exp(-0.5 * torch.cdist(q.double(), q.double()).pow(2)) @ v.double()
    # exact inverse (SOFT-Norm rule: no shift), enough iterations, no normalisation → A·A⁺·A·V = A·V
    with torch.no_grad():
        out = soft_kernel_attention(q.double(), q.double(), v.double(), iters=60, normalized=False)
        shift_error = rel_err(out, exact)
        # the released plain rule inverts A + 0.01·I: its result differs from exact attention by about 1%
        assert 1e-3 < shift_error < 5e-2
        A = gaussian_kernel(q.double(), q.double())
        low_rank = A @ (newton_pinv(A, 60, "soft_norm") @ (A.transpose(-1, -2) @ v.double()))
    assert (low_rank - exact).abs().max().item() < 1e-4 * exact.abs().max().item()


def test_soft_kernel_attention_masks_remove_padded_tokens_and_landmarks():
    q, L, v = torch.randn(1, 10, 4), torch.randn(1, 3, 4), torch.randn(1, 10, 5)
    tm = torch.tensor([[True] * 7 + [False] * 3])
    out = soft_kernel_attention(q, L, v, token_mask=tm)
    v2 = v.clone()
    v2[:, 7:] = 1000.0
    out2 = soft_kernel_attention(q, L, v2, token_mask=tm)
    torch.testing.assert_close(out[:, :7], out2[:, :7])
    lm = torch.tensor([[True, True, False]])
    L2 = L.clone()
    L2[:, 2] = 123.0
    torch.testing.assert_close(
        soft_kernel_attention(q, L, v, landmark_mask=lm, normalized=True),
        soft_kernel_attention(q, L2, v, landmark_mask=lm, normalized=True),
    )


@pytest.mark.parametrize("normalized", [False, True])
def test_streamed_soft_attention_equals_the_whole_kernel_form(normalized):
    """Inference streams K1 over blocks of tokens (two passes, a ragged last block) into a strided ``out``:
    the same result as the one-pass form autograd uses, masks and the query scale included."""
    torch.manual_seed(0)
    B, h, N, m, d = 2, 3, 700, 5, 8
    # float64, so that only the summation order (blocked K1ᵀV) tells the two apart
    q = torch.randn(B, N, h, d, dtype=torch.float64).transpose(1, 2)  # heads of token-major queries: strided
    L, v = torch.randn(B, h, m, d, dtype=torch.float64) * 0.7, torch.randn(B, h, N, d, dtype=torch.float64)
    tm = torch.rand(B, h, N) > 0.2
    lm = torch.tensor([True] * 4 + [False]).expand(B, h, m)
    whole = soft_kernel_attention(
        (q * 0.5).requires_grad_(), L, v, normalized=normalized, token_mask=tm, landmark_mask=lm
    )  # autograd: one pass
    buf = torch.full((B, N, h * d), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        got = soft_kernel_attention(
            q,
            L,
            v,
            normalized=normalized,
            token_mask=tm,
            landmark_mask=lm,
            q_scale=0.5,
            out=buf.view(B, N, h, d).transpose(1, 2),
            chunk_bytes=256 * m * B * h * 8,
        )
    assert got.data_ptr() == buf.data_ptr() and not buf.isnan().any()
    torch.testing.assert_close(got, whole.detach(), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="inference only"):
        soft_kernel_attention(q.requires_grad_(), L, v, out=buf.view(B, N, h, d).transpose(1, 2))


# --- Sinkhorn --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1.0, 0.1, 0.01])
def test_sinkhorn_matches_pot(eps):
    ot = pytest.importorskip("ot", reason="POT (the test extra) provides the reference Sinkhorn")
    rng = np.random.default_rng(0)
    n, m = 30, 7
    scores = rng.normal(size=(n, m))
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    ref = ot.sinkhorn(a, b, -scores, eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
    ours = sinkhorn(torch.tensor(scores), eps, iters=5000 if eps < 0.05 else 1000).double().numpy()
    assert np.abs(ours - ref).max() < 1e-4 * ref.max()
    assert np.abs(ours.sum(1) - 1 / n).max() < 1e-5 and np.abs(ours.sum(0) - 1 / m).max() < 1e-5


def test_sinkhorn_mask_gives_zero_mass_and_matches_pot_on_valid_rows():
    ot = pytest.importorskip("ot", reason="POT (the test extra) provides the reference Sinkhorn")
    torch.manual_seed(0)
    scores = torch.randn(2, 12, 5)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 8:] = False
    plan = sinkhorn(scores, 0.1, 500, mask)
    assert (plan[0, 8:] == 0).all()
    torch.testing.assert_close(plan[0, :8].sum(-1), torch.full((8,), 1 / 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(plan[:, :].sum(-2), torch.full((2, 5), 1 / 5), atol=1e-5, rtol=0)
    ref = ot.sinkhorn(
        np.full(8, 1 / 8),
        np.full(5, 1 / 5),
        -scores[0, :8].double().numpy(),
        0.1,
        method="sinkhorn_log",
        numItermax=20000,
        stopThr=1e-13,
    )
    assert np.abs(plan[0, :8].double().numpy() - ref).max() < 1e-4 * ref.max()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sinkhorn_half_precision_and_small_eps_stay_finite(dtype):
    scores = (torch.randn(4, 64, 49) * 5).to(dtype)
    plan = sinkhorn(scores, 0.01, 10)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(-2), torch.full((4, 49), 1 / 49), atol=1e-5, rtol=0)


def test_sinkhorn_masked_gradients_are_finite():
    scores = torch.randn(1, 6, 3, requires_grad=True)
    mask = torch.tensor([[True, True, True, True, False, False]])
    (sinkhorn(scores, 0.05, 20, mask) * torch.randn(1, 6, 3)).sum().backward()
    assert torch.isfinite(scores.grad).all() and (scores.grad[0, 4:] == 0).all()


# --- Nyström embedding and position filters -------------------------------------------------------------------------
def test_inverse_sqrt_matches_eigendecomposition():
    z = torch.nn.functional.normalize(torch.randn(16, 8, dtype=torch.float64), dim=-1)
    K = spherical_gaussian_kernel(z, z, 0.5).double()
    evals, evecs = torch.linalg.eigh(K + 1e-3 * torch.eye(16, dtype=K.dtype))
    ref = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    assert rel_err(inverse_sqrt_psd(K, 1e-3, iters=30), ref) < 1e-4


def test_nystrom_embedding_reproduces_kernel_on_anchor_span():
    """On the anchors themselves the Nyström map is exact: ⟨ψ(z_i), ψ(z_j)⟩ = κ(z_i, z_j)."""
    z = torch.nn.functional.normalize(torch.randn(12, 6, dtype=torch.float64), dim=-1)
    psi = nystrom_embedding(z * 2.0, z, sigma=0.7, ridge=1e-6, iters=40).double()
    # tokens 2·z_i: κ(2z_i, 2z_j) = |2z_i|·|2z_j|·exp((⟨z_i, z_j⟩ − 1)/σ²) = 4·κ(z_i, z_j)
    K = 4.0 * spherical_gaussian_kernel(z, z, 0.7).double()
    torch.testing.assert_close(psi @ psi.T, K, atol=1e-3, rtol=1e-3)


def test_position_filters():
    M = position_filter_1d(15, 5, 0.1)  # token centres (2i+1)/30 hit reference centres (2j+1)/10
    assert M.shape == (15, 5) and torch.allclose(M.max(), torch.tensor(1.0))
    torch.testing.assert_close(M[1, 0], torch.tensor(1.0))
    assert M[0].argmax() == 0 and M[-1].argmax() == 4  # grids aligned at both ends (cell centres)
    M2 = position_filter_2d((6, 4), (3, 2), 0.2)
    rows, cols = position_filter_1d(6, 3, 0.2), position_filter_1d(4, 2, 0.2)
    torch.testing.assert_close(M2.view(6, 4, 3, 2), rows[:, None, :, None] * cols[None, :, None, :])
    torch.testing.assert_close(position_filter_1d(7, 3, 0.3, log=True).exp(), position_filter_1d(7, 3, 0.3))


@pytest.mark.parametrize("masked", [False, True])
def test_sequence_filter_blocks_equal_the_dense_filter(masked):
    """SequenceFilter builds the sequence filter block by block: its blocks are the rows of the dense
    position_filter_sequence (padded or not), and top() is the dense filter's largest entry."""
    from sofa.ops import position_filter_sequence
    from sofa.ops.position import SequenceFilter

    B, n, m = 3, 53, 7
    mask = torch.ones(B, n, dtype=torch.bool)
    if masked:
        mask[1, 31:] = False
        mask[2, :] = False  # an all-padding sequence
    dense = position_filter_sequence(mask, m, 0.15, log=True)[:, None]  # (B, 1, n, m)
    blocks = SequenceFilter(mask if masked else None, m, 0.15, n=n)
    want = dense if masked else dense[:1]
    for i, j in ((0, 10), (10, 37), (37, n)):
        torch.testing.assert_close(blocks.log_block(i, j), want[..., i:j, :], rtol=1e-6, atol=0)
    torch.testing.assert_close(blocks.top(), want.amax(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="length"):
        SequenceFilter(None, m, 0.15)


def test_spherical_gaussian_kernel_equals_its_plain_form():
    """The fused κ (one GEMM, one multiply-add, one exp) equals the formula as written, values and gradients in
    float64, a zero row included (its gradient finite)."""
    from sofa.ops.nystrom import spherical_gaussian_kernel_plain

    torch.manual_seed(0)
    a = torch.randn(2, 40, 16, dtype=torch.float64) * 3
    a[0, 3] = 0.0
    z = torch.nn.functional.normalize(torch.randn(2, 8, 16, dtype=torch.float64), dim=-1)
    leaves = [a.clone().requires_grad_() for _ in range(2)]
    fused, plain = spherical_gaussian_kernel(leaves[0], z, 0.6), spherical_gaussian_kernel_plain(leaves[1], z, 0.6)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-25)
    g = torch.randn_like(plain)
    (fused * g).sum().backward()
    (plain * g).sum().backward()
    assert torch.isfinite(leaves[0].grad).all()
    torch.testing.assert_close(leaves[0].grad, leaves[1].grad, rtol=1e-10, atol=1e-12)


def _set_dense_reference(f, anchors, ref, vals, sigma, eps, iters, log_m=None, mask=None):
    """SeT's attention from the whole n×m plan (sinkhorn_log), its filter and two softmaxes: quadratic memory,
    independent of set_attention's blocks, scaling domain and fallbacks (the op package's reference)."""
    from sofa.ops.set import set_attention_reference

    return set_attention_reference(f, anchors, ref, vals, sigma, eps, iters, log_m, mask)


@pytest.mark.parametrize("eps,scale", [(0.1, 1.0 / math.sqrt(8)), (0.01, 3.0)])
def test_set_attention_streamed_path_and_its_exact_fallbacks(eps, scale):
    """``impl="scaling"`` runs in the scaling domain over blocks (K̃ only, fused sweeps); rows and columns whose
    scaled sums are too small to trust go through exact log-domain fallbacks. With mild settings none is needed;
    with a sharp kernel (ε = 0.01, spread inputs) the row, column, collect and read fallbacks all are, and the
    result still equals the dense reference and ``impl="log_domain"``, with the 2-D filter given as its two
    factors."""
    from sofa.ops.position import GridFilter
    from sofa.ops.set import set_attention

    torch.manual_seed(0)
    H, W, h, d, k, m = 20, 19, 2, 16, 8, 16
    f = torch.randn(1, h, H * W, d) * max(scale, 1.0)
    vals = torch.randn(1, h, H * W, 8)
    anchors, ref = torch.randn(h, k, d), torch.randn(h, m, k) * scale  # mild: the models' initial reference
    grid = GridFilter((H, W), (4, 4), 0.1)
    lm = position_filter_2d((H, W), (4, 4), 0.1, log=True)
    torch.testing.assert_close(grid.log_block(37, 101), lm[37:101])
    with torch.no_grad():
        fast = set_attention(f, anchors, ref, vals, 0.5, eps, 5, grid, block_rows=32, impl="scaling")  # 12 blocks
    slow = set_attention(f, anchors, ref, vals, 0.5, eps, 5, lm, block_rows=32, impl="log_domain")
    dense = _set_dense_reference(f, anchors, ref, vals, 0.5, eps, 5, lm)
    # the three differ by float32 rounding, which the sharp kernel amplifies: a score s (a length-d dot product,
    # exact to d·eps relative) enters the plan as exp(s/ε), so the plan's entries and the outputs (their
    # weighted means of the values) move by up to d·eps·max|s|/ε relative, times max|values|
    scores = nystrom_embedding(f, anchors, 0.5) @ ref.transpose(-1, -2)
    tol = d * torch.finfo(torch.float32).eps * scores.abs().max().item() / eps * vals.abs().max().item()
    torch.testing.assert_close(fast, dense, rtol=0, atol=tol)
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=tol)


def test_set_attention_streamed_path_with_padding_and_sequence_filter():
    """Padded sequences (mask) with the sequence filter, dense (B, 1, n, m) or a SequenceFilter, many blocks, both
    impls: the valid rows equal the dense reference computed on the plan with zero-mass padded rows."""
    from sofa.ops import position_filter_sequence
    from sofa.ops.position import SequenceFilter
    from sofa.ops.set import set_attention

    torch.manual_seed(1)
    B, h, n, d, k, m = 2, 2, 150, 16, 8, 9
    f, vals = torch.randn(B, h, n, d), torch.randn(B, h, n, 8)
    anchors, ref = torch.randn(h, k, d), torch.randn(h, m, k)
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[1, 97:] = False
    lm = position_filter_sequence(mask, m, 0.2, log=True)[:, None]
    dense = _set_dense_reference(f, anchors, ref, vals, 0.5, 0.1, 5, lm, mask)
    for filt in (lm, SequenceFilter(mask, m, 0.2)):  # the dense filter, and the same built block by block
        for impl in ("scaling", "log_domain"):
            with torch.no_grad():
                fast = set_attention(f, anchors, ref, vals, 0.5, 0.1, 5, filt, mask, block_rows=14, impl=impl)
            torch.testing.assert_close(fast[0], dense[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(fast[1, :, :97], dense[1, :, :97], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("eps,scale", [(0.1, 0.35), (0.01, 3.0)])
def test_set_attention_projects_features_block_by_block(eps, scale):
    """f given as ProjectedFeatures (x, W, b): projected per block inside ``impl="scaling"``, including the blocks
    the exact fallbacks rebuild (ε = 0.01, spread inputs). Same result as the materialised f = split(x·Wᵀ + b),
    with padding and two images; with autograd the gradients of W, b and x are the same too."""
    from sofa.ops.set import ProjectedFeatures, set_attention

    torch.manual_seed(2)
    B, n, C, h, k, m = 2, 300, 32, 2, 8, 9
    x = torch.randn(B, n, C) * scale
    W, b = torch.randn(C, C) / math.sqrt(C) * 3, torch.randn(C) * 0.1
    vals = torch.randn(B, h, n, 8)
    anchors, ref = torch.randn(h, k, C // h), torch.randn(h, m, k) * scale
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[1, 211:] = False
    full = lambda x, W, b: (x @ W.t() + b).unflatten(-1, (h, -1)).transpose(1, 2)  # noqa: E731
    with torch.no_grad():
        lazy = set_attention(
            ProjectedFeatures(x, W, b, h), anchors, ref, vals, 0.5, eps, 5, None, mask, block_rows=14, impl="scaling"
        )  # 22 blocks
        eager = set_attention(full(x, W, b), anchors, ref, vals, 0.5, eps, 5, None, mask, block_rows=14, impl="scaling")
    torch.testing.assert_close(lazy[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lazy[1, :, :211], eager[1, :, :211], rtol=1e-5, atol=1e-5)
    grads = []
    for make in (lambda x, W, b: ProjectedFeatures(x, W, b, h), full):
        xs, Ws, bs = (t.clone().requires_grad_() for t in (x, W, b))
        y = set_attention(make(xs, Ws, bs), anchors, ref, vals, 0.5, eps, 5, None, mask, block_rows=14)
        (y[0].square().sum() + y[1, :, :211].square().sum()).backward()
        grads.append((xs.grad, Ws.grad, bs.grad))
    for g_lazy, g_eager in zip(*grads, strict=True):
        assert g_lazy.abs().sum() > 0
        torch.testing.assert_close(g_lazy, g_eager, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="heads"):
        ProjectedFeatures(x, W[:31], None, h)


@pytest.mark.parametrize("masked", [False, True])
def test_set_attention_backward_matches_autograd_through_the_dense_reference(masked):
    """With autograd set_attention runs its own backward over blocks (no graph of the Sinkhorn iterations): the
    gradients of the features, anchors, reference and values equal autograd's through the dense reference
    (sinkhorn_log on the whole plan, two softmaxes), in float64, over many blocks, with the 2-D filter or with
    padding and the sequence filter; and torch.autograd.gradcheck passes on a small case."""
    from sofa.ops import position_filter_sequence
    from sofa.ops.position import GridFilter
    from sofa.ops.set import set_attention

    torch.manual_seed(3)
    dt = torch.float64
    B, h, H, W, d, k, m = (2, 2, 9, 8, 8, 6, 9)
    n = H * W
    f = torch.randn(B, h, n, d, dtype=dt)
    vals = torch.randn(B, h, n, 5, dtype=dt)
    anchors, ref = torch.randn(h, k, d, dtype=dt), torch.randn(h, m, k, dtype=dt)
    if masked:
        mask = torch.ones(B, n, dtype=torch.bool)
        mask[1, 50:] = False
        lm = position_filter_sequence(mask, m, 0.2, log=True)[:, None].to(dt)
        filt, dense_lm = lm, lm
    else:
        mask = None
        filt, dense_lm = GridFilter((H, W), (3, 3), 0.3), position_filter_2d((H, W), (3, 3), 0.3, log=True).to(dt)
    leaves = [t.clone().requires_grad_() for t in (f, anchors, ref, vals)]
    got = set_attention(*leaves, 0.5, 0.1, 4, filt, mask, block_rows=6)  # 12 blocks
    leaves_ref = [t.clone().requires_grad_() for t in (f, anchors, ref, vals)]
    want = _set_dense_reference(*leaves_ref, 0.5, 0.1, 4, dense_lm, mask)
    rows = slice(None) if mask is None else mask[:, None, :, None].expand_as(want)
    torch.testing.assert_close(got[rows], want[rows], rtol=1e-9, atol=1e-9)
    g = torch.randn_like(want)
    got[rows].mul(g[rows]).sum().backward()
    want[rows].mul(g[rows]).sum().backward()
    for a, b, name in zip(leaves, leaves_ref, ("f", "anchors", "reference", "values"), strict=True):
        assert a.grad.abs().sum() > 0, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-9, msg=name)
    tiny = (
        f[:1, :, :20].clone().requires_grad_(),
        anchors.clone().requires_grad_(),
        ref.clone().requires_grad_(),
        vals[:1, :, :20].clone().requires_grad_(),
    )
    with pytest.raises(ValueError, match="log_m"):
        set_attention(*leaves, 0.5, 0.1, 4, torch.zeros(n, m, dtype=dt, requires_grad=True), mask)
    assert torch.autograd.gradcheck(
        lambda *t: set_attention(*t, 0.5, 0.1, 3, None, None, block_rows=4), tiny, eps=1e-6, atol=1e-6
    )  # 5 blocks


def test_set_attention_saves_little_for_its_backward():
    """With autograd, what set_attention keeps for the backward is O(n·m): log K and a few (n, ·) vectors, not a
    graph of every Sinkhorn iteration (which kept ~40 n×m tensors). Counted with saved-tensor hooks, in bytes,
    against the size of one n×m matrix of all heads."""
    from sofa.ops.set import set_attention

    torch.manual_seed(4)
    B, h, n, d, k, m = 1, 2, 4096, 16, 8, 49
    f = torch.randn(B, h, n, d, requires_grad=True)
    vals = torch.randn(B, h, n, 16, requires_grad=True)
    anchors, ref = torch.randn(h, k, d, requires_grad=True), torch.randn(h, m, k, requires_grad=True)
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = set_attention(f, anchors, ref, vals, 0.5, 0.1, 5, None, chunk_bytes=64 * 1024)
    saved = sum(seen.values())
    nm = B * h * n * m * 4
    assert saved < 4 * nm, f"{saved / nm:.1f} n×m matrices saved for the backward"
    y.sum().backward()
    assert f.grad is not None and anchors.grad is not None and vals.grad is not None


# --- every implementation of an op against its package's reference ---------------------------------------------
# forward over shapes, dtypes and masks; gradients wherever the implementation runs under autograd
_TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=2e-4, atol=2e-5),
    torch.bfloat16: dict(rtol=2e-4, atol=2e-5),
}  # bf16 inputs are computed in float32 by both sides


def _soft_inputs(shape, dtype, masked, seed=0):
    """Queries, landmarks, values and masks. The landmarks are spread so that 20 Newton iterations converge (with
    two landmarks of equal row sums the SOFT-Norm α sits at the edge of convergence, 2/σ_max², and float rounding
    alone decides the result)."""
    B, h, N, m, d = shape
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, h, N, d, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    L = (torch.randn(B, h, m, d, generator=g, dtype=torch.float64) * 1.5).to(dtype)  # A well conditioned
    v = torch.randn(B, h, N, 6, generator=g, dtype=torch.float64).to(dtype)
    tm = lm = None
    if masked:
        tm = torch.rand(B, h, N, generator=g) > 0.3
        lm = torch.ones(B, h, m, dtype=torch.bool)
        lm[..., -1] = False
    return q, L, v, tm, lm


@pytest.mark.parametrize("impl", ["streamed", "one_pass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 5, 4, 4), (2, 3, 300, 7, 8)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("normalized", [False, True])
def test_soft_attention_every_impl_equals_the_reference(impl, dtype, shape, masked, normalized):
    from sofa.ops.soft import soft_kernel_attention_reference

    q, L, v, tm, lm = _soft_inputs(shape, dtype, masked)
    want = soft_kernel_attention_reference(q, L, v, 20, normalized, token_mask=tm, landmark_mask=lm, q_scale=0.7)
    with torch.no_grad():
        got = soft_kernel_attention(
            q, L, v, 20, normalized, token_mask=tm, landmark_mask=lm, q_scale=0.7, block_rows=64, impl=impl
        )
    assert got.dtype == want.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got, want, **_TOL[dtype])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("normalized", [False, True])
def test_soft_attention_gradients_equal_the_reference(masked, normalized):
    """The one-pass form (the one autograd runs, with its backward written out) against autograd through the
    reference, float64, with a query scale; and torch.autograd.gradcheck on the written-out backward alone."""
    from sofa.ops.soft import soft_kernel_attention_reference
    from sofa.ops.soft.attention import _OnePassAttention

    q, L, v, tm, lm = _soft_inputs((2, 2, 40, 5, 4), torch.float64, masked)
    grads = []
    for fn in (
        lambda *t: soft_kernel_attention(*t, 20, normalized, token_mask=tm, landmark_mask=lm, q_scale=0.7),
        lambda *t: soft_kernel_attention_reference(*t, 20, normalized, token_mask=tm, landmark_mask=lm, q_scale=0.7),
    ):
        leaves = [t.clone().requires_grad_() for t in (q, L, v)]
        y = fn(*leaves)
        grads.append(torch.autograd.grad(y.square().sum(), leaves))
    for a, b in zip(*grads, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    A_inv = torch.randn(2, 2, L.shape[-2], L.shape[-2], dtype=torch.float64)
    lm_f = None if lm is None else lm.unsqueeze(-2).double()
    tm_f = None if tm is None else tm.unsqueeze(-1).double()
    small = [t[:, :, :9].clone() if t.shape[-2] == 40 else t.clone() for t in (q, L, v, A_inv)]
    tm_small = None if tm_f is None else tm_f[:, :, :9]
    assert torch.autograd.gradcheck(
        lambda *t: _OnePassAttention.apply(*t, 0.7, lm_f, tm_small), [t.requires_grad_() for t in small]
    )
    with pytest.raises(ValueError, match="inference only"):
        soft_kernel_attention(q.requires_grad_(), L, v, impl="streamed")


def _set_inputs(B, h, n, m, dtype, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    d, k = 8, 6
    f = torch.randn(B, h, n, d, generator=g, dtype=torch.float64).to(dtype)
    vals = torch.randn(B, h, n, 5, generator=g, dtype=torch.float64).to(dtype)
    anchors = torch.randn(h, k, d, generator=g, dtype=torch.float64).to(dtype)
    ref = torch.randn(h, m, k, generator=g, dtype=torch.float64).to(dtype)
    mask = None
    if masked:
        mask = torch.ones(B, n, dtype=torch.bool)
        mask[-1, n // 2 :] = False
    return f, anchors, ref, vals, mask


def _set_filter(n, m, mask, hw):
    from sofa.ops import position_filter_sequence
    from sofa.ops.position import GridFilter

    if mask is not None:
        return position_filter_sequence(mask, m, 0.3, log=True)[:, None]
    side = math.isqrt(m)
    return GridFilter(hw, (side, side), 0.3) if hw[0] * hw[1] == n and side * side == m else None


@pytest.mark.parametrize("impl", ["scaling", "log_domain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("size", [(1, 1, 6, 4, (2, 3)), (2, 2, 90, 9, (9, 10))])
@pytest.mark.parametrize("masked", [False, True])
def test_set_attention_every_impl_equals_the_reference(impl, dtype, size, masked):
    from sofa.ops.set import set_attention, set_attention_reference

    B, h, n, m, hw = size
    f, anchors, ref, vals, mask = _set_inputs(B, h, n, m, dtype, masked)
    log_m = _set_filter(n, m, mask, hw)
    want = set_attention_reference(f, anchors, ref, vals, 0.5, 0.1, 4, log_m, mask)
    with torch.no_grad():
        got = set_attention(f, anchors, ref, vals, 0.5, 0.1, 4, log_m, mask, block_rows=16, impl=impl)
    assert got.dtype == want.dtype
    rows = slice(None) if mask is None else mask[:, None, :, None].expand_as(want)  # padded outputs: undefined
    # the scaling domain zeroes products below exp(−40) of their factors' largest (a float32 policy,
    # sofa.ops.numerics), which float64 resolves: there it agrees to 1e-5 relative, not to float64 rounding
    tol = dict(rtol=1e-5, atol=1e-7) if (impl, dtype) == ("scaling", torch.float64) else _TOL[dtype]
    torch.testing.assert_close(got[rows], want[rows], **tol)


@pytest.mark.parametrize("masked", [False, True])
def test_set_attention_gradients_equal_the_reference(masked):
    """The log-domain form with its hand-written backward, against autograd through the reference, float64."""
    from sofa.ops.set import set_attention, set_attention_reference

    f, anchors, ref, vals, mask = _set_inputs(2, 2, 90, 9, torch.float64, masked, seed=1)
    log_m = _set_filter(90, 9, mask, (9, 10))
    grads = []
    for fn in (
        lambda *t: set_attention(*t, 0.5, 0.1, 4, log_m, mask, block_rows=16),
        lambda *t: set_attention_reference(*t, 0.5, 0.1, 4, log_m, mask),
    ):
        leaves = [t.clone().requires_grad_() for t in (f, anchors, ref, vals)]
        y = fn(*leaves)
        rows = slice(None) if mask is None else mask[:, None, :, None].expand_as(y)
        grads.append(torch.autograd.grad(y[rows].square().sum(), leaves))
    for a, b in zip(*grads, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="inference only"):
        set_attention(f.requires_grad_(), anchors, ref, vals, impl="scaling")


def _block_weights(C, dtype, seed=0):
    from sofa.ops.pool import BlockWeights

    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    return BlockWeights(
        r(C),
        r(C),
        1e-5,
        r(C),
        r(C),
        r(C),
        1e-6,
        r(C),
        r(4 * C, C, 1, 1, scale=0.3),
        r(4 * C),
        r(C, 4 * C, 1, 1, scale=0.2),
        r(C),
    )


@pytest.mark.parametrize(
    "impl,dtype", [("fused_cpu", torch.float32), ("folded", torch.float32), ("folded", torch.float64)]
)  # the fused form runs float32 maps only
@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (3, 16, 9, 11)])
@pytest.mark.parametrize("mixer", ["pool", "identity"])
def test_metaformer_block_every_impl_equals_the_reference(impl, dtype, shape, mixer):
    """The PoolFormer block's fused CPU inference form (float32 channels-last only) and folded form against the
    textbook block."""
    from sofa.ops.pool import metaformer_block, metaformer_block_reference

    w = _block_weights(shape[1], dtype)
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    want = metaformer_block_reference(x, w, mixer)
    with torch.no_grad():
        got = metaformer_block(x, w, mixer, impl=impl)
    torch.testing.assert_close(got, want, **(_TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)))


@pytest.mark.parametrize("mixer", ["pool", "identity"])
def test_metaformer_block_folded_gradients_equal_the_reference(mixer):
    from sofa.ops.pool import metaformer_block, metaformer_block_reference

    w = _block_weights(8, torch.float64, seed=2)
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    grads = []
    for fn in (
        lambda x, *t: metaformer_block(
            x, w._make((*t[:2], w.norm1_eps, *t[2:5], w.norm2_eps, *t[5:])), mixer, impl="folded"
        ),
        lambda x, *t: metaformer_block_reference(
            x, w._make((*t[:2], w.norm1_eps, *t[2:5], w.norm2_eps, *t[5:])), mixer
        ),
    ):
        leaves = [t.clone().requires_grad_() for t in (x, *w[:2], *w[3:6], *w[7:])]
        y = fn(*leaves)
        grads.append(torch.autograd.grad(y.square().sum(), leaves))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
    with pytest.raises(ValueError, match="needs mixer"):
        metaformer_block(x, w, lambda t: t, impl="folded")
