"""Position filters of SeT: M_ij = exp(−(α_i − β_j)² / τ²) between token i and reference j
(docs/methods/setformer.md, "Position filter").

Cell centres are used for both grids, α_i = (i + ½)/n and β_j = (j + ½)/m, which keeps them aligned at both
ends. Results are float32.
"""

from __future__ import annotations

from typing import Optional

import torch


def _centres(n: int, device: Optional[torch.device] = None) -> torch.Tensor:
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n


def _check_tau(tau: float) -> None:
    if tau <= 0:
        raise ValueError(f"position filter: tau must be positive, got {tau}")


def position_filter_1d(n: int, m: int, tau: float, device=None, log: bool = False) -> torch.Tensor:
    """(n, m) filter between n tokens and m references on a line (its logarithm with ``log=True``)."""
    _check_tau(tau)
    diff = _centres(n, device)[:, None] - _centres(m, device)[None, :]
    log_m = -diff.pow(2) / tau**2
    return log_m if log else log_m.exp()


def position_filter_2d(
    hw: tuple[int, int], grid: tuple[int, int], tau: float, device=None, log: bool = False
) -> torch.Tensor:
    """(H·W, gh·gw) filter between an H×W token grid and a gh×gw reference grid (both row-major).

    The product of a row factor (over H) and a column factor (over W), each of the 1-D form.
    """
    log_m = GridFilter(hw, grid, tau, device).log_block(0, hw[0] * hw[1])
    return log_m if log else log_m.exp()


def sequence_positions(mask: torch.Tensor) -> torch.Tensor:
    """Cell-centre positions (rank + ½)/n_valid of the valid tokens of each sequence; (..., n) → (..., n).

    Padded positions get the position of the valid token before them (their value is never used).
    """
    mask = mask.to(torch.float32)
    rank = mask.cumsum(-1) - mask  # number of valid tokens before each position
    n_valid = mask.sum(-1, keepdim=True).clamp_min(1.0)
    return (rank + 0.5) / n_valid


def position_filter_sequence(mask: torch.Tensor, m: int, tau: float, log: bool = False) -> torch.Tensor:
    """(..., n, m) filter for padded sequences: positions counted over the valid tokens of each sequence."""
    _check_tau(tau)
    pos = sequence_positions(mask)
    diff = pos.unsqueeze(-1) - _centres(m, mask.device)
    log_m = -diff.pow(2) / tau**2
    return log_m if log else log_m.exp()


class SequenceFilter:
    """The sequence filter of ``position_filter_sequence(mask, m, tau, log=True)[:, None]`` by blocks of tokens,
    never as the whole (B, 1, n, m) tensor (at 65,536 tokens building it took longer than SeT's Sinkhorn sweeps):
    ``log_block(i, j)`` is its rows i … j−1, (B, 1, j − i, m). ``mask`` (B, n), True for real tokens, or None
    for unpadded sequences of ``n`` tokens (then B is 1 and broadcasts)."""

    def __init__(self, mask: Optional[torch.Tensor], m: int, tau: float, n: Optional[int] = None, device=None):
        _check_tau(tau)
        if mask is None:
            if n is None:
                raise ValueError("SequenceFilter: give a mask or the sequence length n")
            self.positions = _centres(n, device)[None]  # (1, n)
        else:
            self.positions = sequence_positions(mask)  # (B, n)
        self.centres = _centres(m, self.positions.device)
        self.tau = tau

    def log_block(self, i: int, j: int) -> torch.Tensor:
        diff = self.positions[:, i:j, None] - self.centres  # (B, c, m)
        return diff.square_().div_(-(self.tau**2))[:, None]

    def top(self) -> torch.Tensor:
        """The filter's largest entry: the token closest to a reference's centre, O(n) (the nearest centre to a
        position p in [0, 1] is that of the cell of width 1/m holding p)."""
        m = self.centres.numel()
        nearest = (self.positions * m).floor().clamp_(0, m - 1)
        gap = (self.positions - (nearest + 0.5) / m).abs().amin()
        return -(gap * gap) / self.tau**2


class GridFilter:
    """The 2-D position filter of ``position_filter_2d`` by blocks of tokens, never as the whole (H·W)×m matrix:
    log M[t, (a, b)] = rows[t // W, a] + cols[t % W, b] for token t of the row-major H×W grid and reference
    (a, b) of the gh×gw grid. ``log_block(i, j)`` is rows i … j−1 of ``position_filter_2d(..., log=True)``."""

    def __init__(self, hw: tuple[int, int], grid: tuple[int, int], tau: float, device=None):
        (H, W), (gh, gw) = hw, grid
        self.hw, self.grid, self.tau = (H, W), (gh, gw), tau
        self.rows = position_filter_1d(H, gh, tau, device, log=True)  # (H, gh)
        self.cols = position_filter_1d(W, gw, tau, device, log=True)  # (W, gw)

    def index(self, i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The grid row and column of tokens i … j−1 (row-major)."""
        t = torch.arange(i, j, device=self.rows.device)
        W = self.hw[1]
        return t // W, t % W

    def log_block(self, i: int, j: int) -> torch.Tensor:
        r, c = self.index(i, j)
        return (self.rows[r][:, :, None] + self.cols[c][:, None, :]).reshape(j - i, -1)
