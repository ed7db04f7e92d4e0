"""The numerical policy of every op, in one place: floors of exponentials, masked log-masses, trust thresholds of
the scaling domain, and the block sizes that keep temporaries in the cache.

Subnormal floats are kept out everywhere: an exponential whose argument is below ``UNDERFLOW_EXPONENT`` (or that
is below exp(``UNDERFLOW_EXPONENT``) of its row's, column's or sum's largest term) is an exact zero. Products of
two kept entries stay far above float32's smallest normal number (1.2e-38), so the products that follow never
make subnormals, whose CPU arithmetic is about 20× slower. The change to any output is below 1e-17 per entry,
far under float32's resolution of entries of order one.
"""

from __future__ import annotations

import math

import torch

#: exp(−40) ≈ 4e-18: kernel entries, softmax weights and log-sum-exp terms below it (relative to their largest)
#: are exact zeros. In the backward of SeT's log domain a floor of exp(−80) would make subnormal gradients
#: (gradient × exp(−80) is below float32's smallest normal number for any gradient under 6e-4).
UNDERFLOW_EXPONENT = -40.0

#: log-mass of padded rows in Sinkhorn: exp of it is exactly zero in float32, yet it stays finite, so no
#: inf − inf (and no NaN gradient) ever appears
MASKED_LOG = -1e30

#: SeT's scaling domain trusts a scaled row or column sum that is at least exp(−20) of its largest possible
#: term: the terms dropped below exp(−40) (at most m of them in a row) then change a row's sum by less than
#: m·exp(−20) ≈ 1e-7 relative. Rows or columns below it are recomputed exactly in the log domain.
TRUST = math.exp(-20.0)
#: the headroom of SeT's column shift: every trusted row has rmax + u ≤ log a − vmax + SCALING_HEADROOM
SCALING_HEADROOM = 20.0

#: bytes of SOFT's kernel block K1_b on its streamed path: it and its products stay in the cache
SOFT_CHUNK_BYTES = 2 * 2**20
#: bytes of one block of SeT's (n, m) matrices: a few of them stay in the cache together
SET_CHUNK_BYTES = 2 * 2**20
#: hidden-activation bytes per chunk of the fused MetaFormer MLP (docs/benchmarks.md has the measurements)
MLP_CHUNK_BYTES = 4 << 20
#: the fewest token rows in a block of SOFT's and SeT's streamed paths (one block when all the rows fit)
MIN_BLOCK_ROWS = 256
#: fewer rows than this run through ``F.linear`` (a 1×1 convolution's fixed cost is not worth it)
LINEAR_MIN_ROWS = 256

_THRESHOLDS: dict = {}


def keep_threshold(dtype: torch.dtype = torch.float32) -> float:
    """The largest ``dtype`` value below exp(UNDERFLOW_EXPONENT): ``F.threshold`` at it keeps exactly the entries
    ≥ exp(UNDERFLOW_EXPONENT)."""
    if dtype not in _THRESHOLDS:
        e = torch.exp(torch.tensor(UNDERFLOW_EXPONENT, dtype=dtype))
        _THRESHOLDS[dtype] = torch.nextafter(e, torch.zeros((), dtype=dtype)).item()
    return _THRESHOLDS[dtype]


def token_spans(n: int, row_bytes: int, chunk_bytes: int, min_rows: int = MIN_BLOCK_ROWS) -> list:
    """[(i, j), ...] blocks of the n tokens of an (..., n, ·) temporary whose rows take ``row_bytes`` each (all
    batch and head dimensions together): about ``chunk_bytes`` per block, at least ``min_rows`` rows (one block
    when the whole temporary fits)."""
    rows = max(min_rows, chunk_bytes // max(1, row_bytes))
    return [(i, min(i + rows, n)) for i in range(0, n, rows)]
