"""Mask inverse rendering: lift a view's 2D mask into the 3D mask field.

The rendered mask score of a ray is S = sum_i w_i m(x_i), where w_i are the frozen NeRF's volume
weights and m the mask field. SA3D's loss for a view with 2D mask M is

    L = -sum_p M(p) S(p) + lambda * sum_p (1 - M(p)) S(p) = -sum_p t(p) S(p),

with the per-pixel target t = 1 inside the mask and -lambda outside. L is linear in m, and m is
linear in the mask field's parameters (a hash grid: trilinear interpolation with non-negative
weights), so dL/dtheta does not depend on theta: each view casts a fixed, weighted vote.

Two update rules are offered:

* ``vote``: every parameter holds the weighted average of the targets of all the samples
  that touched it, theta = sum_v (-dL_v/dtheta) / sum_v (dT_v/dtheta), with T_v = sum_p S(p) the
  "touch" weight. This is the authors' voxel version (lr 1 with a per-voxel running average), it is
  exact in one accumulation per view, and it keeps m in [-lambda, 1].
* ``sgd`` (the pipeline's default): plain gradient steps theta -= lr * dL/dtheta (the authors'
  hash-grid version), with the loss averaged over the view's pixels. Only the sign of the rendered
  score decides the mask, so the step size does not matter; frequently seen (coarse) entries
  speak louder than rarely seen fine ones, which measured better than ``vote``.

With ``corners`` (the table entries and weights each position reads), both rules are computed by
gathers and scatter-adds instead of autograd: the same numbers, much cheaper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

MEMO_BYTES = 1 << 30  # corner lists kept between a view's score and its vote up to this size


def vote_targets(mask: torch.Tensor, neg_weight: float) -> torch.Tensor:
    """Per-pixel targets t: 1 inside the 2D mask, -neg_weight outside.

    Example: mask [1, 0] with lambda 1 -> [1, -1]; with lambda 0.3 -> [1, -0.3].
    """
    return torch.where(
        mask.bool(),
        torch.ones_like(mask, dtype=torch.float32),
        torch.full_like(mask, -float(neg_weight), dtype=torch.float32),
    )


def render_mask_score(
    field: Callable[[torch.Tensor], torch.Tensor], positions: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """S = sum_i w_i m(x_i) for R rays of S samples: positions R x S x 3, weights R x S -> R."""
    r, s = weights.shape
    values = field(positions.reshape(-1, 3)).reshape(r, s)
    return (weights * values).sum(dim=-1)


Corners = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class MaskLifter:
    """Accumulates views into a mask field whose parameters are linear in its output.

    Args:
        field: maps N x 3 positions to N mask values; linear in ``param`` with non-negative
            interpolation weights.
        param: the field's one trainable tensor (the hash table).
        mode: ``vote`` or ``sgd`` (see the module docstring).
        lr: step size of the ``sgd`` mode.
        chunk_rays: rays per chunk (bounds memory).
        corners: optional; maps N x 3 positions to the table entries each reads and their weights
            (indices N x J, weights N x J, m(x) = sum_j w_j param[i_j]). With it, scores are
            gathers and votes are scatter-adds (no autograd); without it, votes are two autograd
            passes.
        vote_prior: ``vote`` mode only: a pseudo-count (in units of the mean touch weight of the
            touched entries) of zero votes every entry starts with, so rarely seen entries lean
            towards 0 (0 = the plain running average).
    """

    def __init__(
        self,
        field: Callable[[torch.Tensor], torch.Tensor],
        param: nn.Parameter,
        mode: str = "vote",
        lr: float = 0.1,
        chunk_rays: int = 16384,
        corners: Corners | None = None,
        vote_prior: float = 0.0,
    ) -> None:
        if mode not in ("vote", "sgd"):
            raise ValueError(f"lifting mode must be 'vote' or 'sgd', got {mode!r}")
        self.field = field
        self.param = param
        self.mode = mode
        self.lr = lr
        self.chunk_rays = chunk_rays
        self.corners = corners
        self.vote_prior = vote_prior
        self.numerator = torch.zeros_like(param, dtype=torch.float32)
        self.denominator = torch.zeros_like(param, dtype=torch.float32)
        self._memo: tuple[torch.Tensor, list] | None = None
        self._touch_sum = 0.0  # the denominator's total (its mean over touched entries sets the prior)

    def _corner_chunks(self, positions: torch.Tensor):
        """(slice, indices, weights) per chunk of rays; kept for the next call on the same tensor
        while they fit in ``MEMO_BYTES`` (the score and the vote of a view share them)."""
        if self._memo is not None and self._memo[0] is positions:
            yield from self._memo[1]
            return
        chunks, size = [], 0
        for start in range(0, positions.shape[0], self.chunk_rays):
            sl = slice(start, start + self.chunk_rays)
            idx, w = self.corners(positions[sl].reshape(-1, 3))
            size += idx.numel() * idx.element_size() + w.numel() * w.element_size()
            if chunks is not None:
                chunks.append((sl, idx, w))
                if size > MEMO_BYTES:
                    chunks = None
            yield sl, idx, w
        # the memo holds the tensor itself, so its identity cannot be taken by a new tensor
        self._memo = (positions, chunks) if chunks is not None else None

    @torch.no_grad()
    def score(self, positions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Rendered mask score S of R rays (positions R x S x 3, weights R x S)."""
        if self.corners is None:
            return render_mask_score(self.field, positions, weights)
        table = self.param.detach().reshape(-1, 1).float()
        out = torch.empty(weights.shape[0], dtype=torch.float32, device=weights.device)
        for sl, idx, w in self._corner_chunks(positions):
            # m(x) per sample: a fused gather-multiply-sum over its corner entries
            m = F.embedding_bag(idx, table, per_sample_weights=w, mode="sum").view(weights[sl].shape)
            out[sl] = (weights[sl].float() * m).sum(-1)
        return out

    def _grads(
        self, positions: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (sum_p t(p) dS(p)/dtheta, sum_p dS(p)/dtheta) over the given rays (autograd)."""
        signed = torch.zeros_like(self.param, dtype=torch.float32)
        touch = torch.zeros_like(self.param, dtype=torch.float32)
        for start in range(0, weights.shape[0], self.chunk_rays):
            sl = slice(start, start + self.chunk_rays)
            with torch.enable_grad():
                score = render_mask_score(self.field, positions[sl], weights[sl])
                g_signed = torch.autograd.grad((score * targets[sl].to(score)).sum(), self.param, retain_graph=True)[0]
                g_touch = torch.autograd.grad(score.sum(), self.param)[0]
            signed += g_signed.float()
            touch += g_touch.float()
        return signed, touch

    def _scatter(
        self, positions: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor, signed: torch.Tensor, touch=None
    ) -> float:
        """The same sums as :meth:`_grads`, scattered straight into ``signed`` (and ``touch``);
        returns the total touch weight added."""
        total = 0.0
        s_flat = signed.view(-1)
        for sl, idx, w in self._corner_chunks(positions):
            ws = weights[sl].float().reshape(-1, 1) * w  # dS/dtheta contributions, N x J
            t = targets[sl].to(ws).repeat_interleave(weights.shape[1]).view(-1, 1)
            if touch is not None:
                touch.view(-1).index_add_(0, idx.reshape(-1), ws.reshape(-1))
                total += float(ws.sum())
            s_flat.index_add_(0, idx.reshape(-1), (ws * t).reshape(-1))
        return total

    @torch.no_grad()
    def add_view(self, positions: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, neg_weight: float) -> None:
        """Lift one view: positions R x S x 3, weights R x S, 2D mask R (bool) for the same rays."""
        if positions.shape[:2] != weights.shape or mask.shape[0] != weights.shape[0]:
            raise ValueError(
                f"inconsistent shapes: positions {tuple(positions.shape)}, weights {tuple(weights.shape)}, mask {tuple(mask.shape)}"
            )
        targets = vote_targets(mask.reshape(-1), neg_weight)
        if self.corners is not None and self.mode == "sgd" and self.param.dtype == torch.float32:
            # L = -mean_p t(p) S(p): the step -lr dL/dtheta scattered straight into the table
            self._scatter(positions, weights, targets * (self.lr / max(weights.shape[0], 1)), self.param.data)
            self._memo = None
            return
        if self.corners is not None:
            self._touch_sum += self._scatter(positions, weights, targets, self.numerator, self.denominator)
        else:
            signed, touch = self._grads(positions, weights, targets)
            if self.mode == "sgd":
                self.param.add_(signed.to(self.param.dtype), alpha=self.lr / max(weights.shape[0], 1))
                self._memo = None
                return
            self.numerator += signed
            self.denominator += touch
            self._touch_sum += float(touch.sum())
        self._memo = None
        # value = numerator / (denominator + prior); untouched entries (0 / prior) stay 0
        prior = 0.0
        if self.vote_prior > 0:
            touched = int(torch.count_nonzero(self.denominator))
            prior = self.vote_prior * self._touch_sum / max(touched, 1)
        value = torch.add(self.denominator, prior).clamp_min_(1e-12)
        torch.div(self.numerator, value, out=value)
        self.param.copy_(value.to(self.param.dtype))

    def reset(self) -> None:
        self.numerator.zero_()
        self.denominator.zero_()
        self._touch_sum = 0.0
        self._memo = None
        with torch.no_grad():
            self.param.zero_()
