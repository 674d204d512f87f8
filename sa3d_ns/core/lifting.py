"""Mask inverse rendering: lift a view's 2D mask into the 3D mask field.

The rendered mask score of a ray is S = sum_i w_i m(x_i), where w_i are the frozen NeRF's volume
weights and m the mask field. SA3D's loss for a view with 2D mask M is

    L = -sum_p M(p) S(p) + lambda * sum_p (1 - M(p)) S(p) = -sum_p t(p) S(p),

with the per-pixel target t = 1 inside the mask and -lambda outside. L is linear in m, and m is
linear in the mask field's parameters (a hash grid: trilinear interpolation with non-negative
weights), so dL/dtheta does not depend on theta: each view casts a fixed, weighted vote.

Two update rules are offered:

* ``vote`` (the pipeline's default): every parameter holds the weighted average of the targets of
  all the samples that touched it, theta = sum_v (-dL_v/dtheta) / sum_v (dT_v/dtheta), with
  T_v = sum_p S(p) the "touch" weight, shrunk towards 0 by a prior. This is the authors' voxel
  version (lr 1 with a per-voxel running average), exact in one accumulation per view, and it
  keeps m in [-lambda, 1].
* ``sgd``: plain gradient steps theta -= lr * dL/dtheta (the authors' hash-grid version), with the
  loss averaged over the view's pixels.

With ``corners`` (the table entries and weights each position reads), both rules are computed by
gathers and scatter-adds instead of autograd: the same numbers, much cheaper. A view's
*footprint* (for each ray, the entries its samples read and their weights times the samples'
volume weights) does not depend on the object, so it is computed once per view and can be kept
(``FootprintCache``) for every later object. Since t = (1 + lambda) M - lambda, a view's vote is
(1 + lambda) times the footprint of the rays inside the mask minus lambda times its whole touch:
only the rays inside the mask cost a second scatter.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import torch
from torch import nn

from sa3d_ns.core import hashgrid

MEMO_BYTES = 1 << 30  # a footprint kept between a view's score and its vote (no cache) up to this size

# (table entries, weights): level-major, L x N x J for N positions (J entries per position and level)
Corners = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# one chunk of a footprint: (rays, entries L x r x C, weights L x r x C) with C = samples x J
Chunk = tuple[slice, torch.Tensor, torch.Tensor]

_POOL: ThreadPoolExecutor | None = None


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
    """S = sum_i w_i m(x_i) for R rays of S samples: positions R x S x 3 (or whatever else the field
    reads per sample, R x S x ...), weights R x S -> R."""
    r, s = weights.shape
    values = field(positions.reshape(r * s, *positions.shape[2:])).reshape(r, s)
    return (weights * values).sum(dim=-1)


def scatter_add(table: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, alpha: float = 1.0) -> None:
    """table[idx] += alpha * values for level-major idx / values (L x ...). On the CPU the levels
    are split over threads: each level owns its own part of the table, so no two threads write the
    same entry (torch's CPU index_add is single-threaded)."""
    threads = torch.get_num_threads()
    if table.device.type != "cpu" or threads < 2 or idx.shape[0] < 2:
        table.index_add_(0, idx.reshape(-1), values.reshape(-1), alpha=alpha)
        return
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(threads, thread_name_prefix="sa3d-scatter")
    bounds = torch.linspace(0, idx.shape[0], min(threads, idx.shape[0]) + 1).round().long().tolist()
    jobs = [
        _POOL.submit(table.index_add_, 0, idx[a:b].reshape(-1), values[a:b].reshape(-1), alpha=alpha)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    for job in jobs:
        job.result()


def chunk_bytes(chunks: list[Chunk]) -> int:
    return sum(i.numel() * i.element_size() + w.numel() * w.element_size() for _, i, w in chunks)


def item_bytes(item) -> int:
    """Bytes of a cached item: a footprint (list of chunks) or a touch (table, its total)."""
    if isinstance(item, tuple):
        return item[0].numel() * item[0].element_size()
    return chunk_bytes(item)


class FootprintCache:
    """What views cost to recompute and is the same for every object, kept in memory within
    ``max_bytes``: a view's footprint (its chunks) and its touch (the footprint summed into a table,
    so adding it is one dense pass instead of a scatter). Keys name the view and the table layout
    (every object's mask field has the same). Items are kept while they fit and never evicted:
    objects visit every view in turn, and under that pattern a fixed subset is hit every time,
    where least-recently-used eviction would miss on every view once the views outgrow it.

    Touches come first: ``reserve`` bytes (e.g. one table per view) are held for them, and
    footprints use only what is left. A touch is one table whatever the view's size and saves a
    scatter of the whole view; a large view's footprint can be many tables, and without it a later
    object recomputes the view's corners (all rays for its score, only the masked rays for its
    vote when the touch is kept)."""

    def __init__(self, max_bytes: int, reserve: int = 0) -> None:
        self.max_bytes = max_bytes
        self.reserve = reserve
        self.items: dict[Hashable, list[Chunk] | tuple[torch.Tensor, float]] = {}
        self.bytes = 0
        self.touch_bytes = 0
        self.hits = 0

    def get(self, key: Hashable):
        item = self.items.get(key)
        if item is not None:
            self.hits += 1
        return item

    def room(self, kind: str) -> int:
        """Bytes still free for an item of ``kind`` ("touch" or "footprint")."""
        held = max(self.reserve - self.touch_bytes, 0) if kind == "footprint" else 0
        return self.max_bytes - held - self.bytes

    def fits(self, size: int, kind: str) -> bool:
        return size <= self.room(kind)

    def put(self, key: tuple, item) -> None:
        size, kind = item_bytes(item), key[-1]
        if key not in self.items and self.fits(size, kind):
            self.items[key] = item
            self.bytes += size
            if kind == "touch":
                self.touch_bytes += size


class MaskLifter:
    """Accumulates views into a mask field whose parameters are linear in its output.

    Args:
        field: maps N x 3 positions to N mask values; linear in ``param`` with non-negative
            interpolation weights. (The "positions" are whatever a sample holds for the field:
            3D points for a hash grid, the Gaussian's index for a splat's per-Gaussian mask.)
        param: the field's one trainable tensor (the hash table).
        mode: ``vote`` or ``sgd`` (see the module docstring).
        lr: step size of the ``sgd`` mode.
        chunk_rays: rays per chunk (bounds memory).
        corners: optional; maps N x 3 positions to the table entries each reads and their weights,
            level-major (indices L x N x J, weights L x N x J, m(x) = sum_{l,j} w param[i]). With
            it, scores are gathers and votes are scatter-adds (no autograd); without it, votes are
            two autograd passes.
        vote_prior: ``vote`` mode only: a pseudo-count (in units of the mean touch weight of the
            touched entries) of zero votes every entry starts with, so rarely seen entries lean
            towards 0 (0 = the plain running average).
        footprints: optional cache of views' footprints shared by lifters whose fields have the
            same layout; used for the calls that pass a ``key``.
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
        footprints: FootprintCache | None = None,
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
        self.footprints = footprints
        # vote sums: touch = sum_v dT_v/dtheta; shifted = sum_v -dL_v/dtheta + lam * touch, kept
        # shifted by one lambda so that a view adds only its masked rays besides its touch
        # (allocated on the first view, freed by release() once the object is done)
        self.touch: torch.Tensor | None = None
        self.shifted: torch.Tensor | None = None
        self.lam = 0.0
        self._value: torch.Tensor | None = None  # (touch + prior), kept to avoid a table-sized allocation per view
        self._memo: tuple[torch.Tensor, list[Chunk]] | None = None
        self._touch_sum = 0.0  # the touch total (its mean over touched entries sets the prior)

    # ------------------------------------------------------------------ footprints
    def _build(self, positions: torch.Tensor, weights: torch.Tensor) -> Iterator[Chunk]:
        assert self.corners is not None, "footprints are listed only with corners"
        r, s = weights.shape
        for start in range(0, r, self.chunk_rays):
            sl = slice(start, min(start + self.chunk_rays, r))
            n = sl.stop - sl.start
            idx, w = self.corners(positions[sl].reshape(n * s, *positions.shape[2:]))
            levels = idx.shape[0]
            w.mul_(weights[sl].reshape(1, -1, 1).to(w))  # the samples' volume weights folded in
            yield sl, idx.view(levels, n, -1), w.view(levels, n, -1)

    def footprint(self, positions: torch.Tensor, weights: torch.Tensor, key: Hashable | None = None) -> Iterator[Chunk]:
        """The view's chunks: from the cache (``key``), from the memo of the last call on the same
        tensor, or computed chunk by chunk (kept in the cache, or else in the memo, while they
        fit: a view too large for both is streamed and never held whole)."""
        cache = self.footprints if key is not None else None
        if cache is not None:
            chunks = cast("list[Chunk] | None", cache.get((key, "footprint")))
            if chunks is not None:
                yield from chunks
                return
        if self._memo is not None and self._memo[0] is positions:
            yield from self._memo[1]
            return
        room = self._footprint_room(cache)
        chunks, size = [], 0
        for chunk in self._build(positions, weights):
            size += chunk_bytes([chunk])
            if chunks is not None:
                chunks.append(chunk)
                if size > room:
                    chunks = None
            yield chunk
        if chunks is not None and cache is not None and cache.fits(size, "footprint"):
            cache.put((key, "footprint"), chunks)
            self._memo = None
        else:  # the memo holds the tensor itself, so its identity cannot be taken by a new tensor
            self._memo = (positions, chunks) if chunks is not None and size <= MEMO_BYTES else None

    @staticmethod
    def _footprint_room(cache: FootprintCache | None) -> int:
        """Bytes up to which a view's footprint is kept after it is computed (cache or memo)."""
        return MEMO_BYTES if cache is None else max(MEMO_BYTES, cache.room("footprint"))

    def _touch_alongside(self, key: Hashable | None, rays: int, first: Chunk) -> torch.Tensor | None:
        """A zero table to sum the view's touch into while its score streams the footprint (from
        its ``first`` chunk of ``rays``), or None: only for a view whose footprint is too large to
        be kept until its vote and whose touch is not kept yet but fits. Its vote then computes
        the corners of the masked rays alone instead of every ray's a second time."""
        cache = self.footprints if key is not None else None
        if cache is None or (key, "touch") in cache.items:
            return None
        sl = first[0]
        if chunk_bytes([first]) * rays / max(sl.stop - sl.start, 1) <= self._footprint_room(cache):
            return None  # (kept: its vote reads it again, the touch summed there as before)
        return self._new_touch(cache)

    def _new_touch(self, cache: FootprintCache | None) -> torch.Tensor | None:
        """A zero table to sum a view's touch into, when ``cache`` has room to keep it; else None."""
        if cache is None or not cache.fits(self.param.numel() * 4, "touch"):
            return None
        return torch.zeros(self.param.numel(), dtype=torch.float32, device=self.param.device)

    def _holds_footprint(self, positions: torch.Tensor, key: Hashable | None) -> bool:
        """Whether the view's footprint is kept (cache or memo), i.e. costs nothing to read."""
        if key is not None and self.footprints is not None and (key, "footprint") in self.footprints.items:
            return True
        return self._memo is not None and self._memo[0] is positions

    # ------------------------------------------------------------------ score and vote
    @torch.no_grad()
    def score(self, positions: torch.Tensor, weights: torch.Tensor, key: Hashable | None = None) -> torch.Tensor:
        """Rendered mask score S of R rays (positions R x S x 3, weights R x S)."""
        if self.corners is None:
            return render_mask_score(self.field, positions, weights)
        table = self.param.detach().reshape(-1, 1).float()
        out = torch.empty(weights.shape[0], dtype=torch.float32, device=weights.device)
        held = self._holds_footprint(positions, key)
        touch = None
        for sl, idx, w in self.footprint(positions, weights, key):
            levels, n, c = idx.shape
            # per (level, ray): a fused gather-multiply-sum over its entries; then over levels
            bags = hashgrid.bag_sum(idx.view(-1, c), w.view(-1, c), table)
            out[sl] = bags.view(levels, n).sum(0)
            if sl.start == 0 and not held:
                touch = self._touch_alongside(key, weights.shape[0], (sl, idx, w))
            if touch is not None:
                scatter_add(touch, idx, w)
        if touch is not None:
            assert self.footprints is not None  # (a touch is only summed for a cache)
            self.footprints.put((key, "touch"), (touch, float(touch.sum())))
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

    def _scatter(self, positions, weights, key, mask: torch.Tensor, whole: tuple, inside: tuple, scale: float) -> float:
        """For (table, alpha) pairs: whole's table[entries] += alpha * scale * the footprint of
        every ray (the view's touch), inside's += alpha * scale * the footprint of the rays in
        ``mask``, in one pass over the footprint. The touch comes from the cache as a dense table
        when it is there, and is built and kept when there is room. Returns the total weight of
        the footprint (times scale)."""
        (table, alpha), (in_table, in_alpha) = whole, inside
        cache = self.footprints if key is not None else None
        cached = cast("tuple[torch.Tensor, float] | None", cache.get((key, "touch")) if cache is not None else None)
        touch = None if cached is None else cached[0]
        build = self._new_touch(cache) if touch is None else None
        total = 0.0
        if touch is not None and not self._holds_footprint(positions, key):
            # the touch is kept but not the footprint: only the masked rays' part is needed
            rays = mask.nonzero().squeeze(1)
            if len(rays):
                for _, idx, w in self._build(positions[rays], weights[rays]):
                    scatter_add(in_table.view(-1), idx, w, alpha=in_alpha * scale)
        else:
            for sl, idx, w in self.footprint(positions, weights, key):
                if build is not None:
                    scatter_add(build, idx, w)
                elif touch is None:
                    scatter_add(table.view(-1), idx, w, alpha=alpha * scale)
                    total += float(w.sum()) * scale
                rays = mask[sl].nonzero().squeeze(1)
                if len(rays):
                    scatter_add(
                        in_table.view(-1), idx.index_select(1, rays), w.index_select(1, rays), alpha=in_alpha * scale
                    )
        if build is not None:
            assert cache is not None  # (build is only allocated with a cache)
            cached = (build, float(build.sum()))
            cache.put((key, "touch"), cached)
            touch = build
        if touch is not None:
            assert cached is not None  # (the touch comes from it)
            table.view(-1).add_(touch, alpha=alpha * scale)
            total = cached[1] * scale
        return total

    @torch.no_grad()
    def add_view(
        self,
        positions: torch.Tensor,
        weights: torch.Tensor,
        mask: torch.Tensor,
        neg_weight: float,
        key: Hashable | None = None,
        withdraw: bool = False,
    ) -> None:
        """Lift one view: positions R x S x 3, weights R x S, 2D mask R (bool) for the same rays.

        ``withdraw``: take back a vote this lifter was given before (the same view, mask and
        ``neg_weight``): both rules are sums of per-view terms that do not depend on the table,
        so the view's term is subtracted and the result is as if it had never been lifted (to
        float rounding)."""
        if positions.shape[:2] != weights.shape or mask.shape[0] != weights.shape[0]:
            raise ValueError(
                f"inconsistent shapes: positions {tuple(positions.shape)}, weights {tuple(weights.shape)}, mask {tuple(mask.shape)}"
            )
        mask = mask.reshape(-1).bool()
        lam = float(neg_weight)
        sign = -1.0 if withdraw else 1.0
        explicit = self.corners is not None and self.param.dtype == torch.float32
        if self.mode == "sgd":
            scale = sign * self.lr / max(weights.shape[0], 1)  # L = -mean_p t(p) S(p), the step -lr dL/dtheta
            if explicit:
                self._scatter(
                    positions, weights, key, mask, (self.param.data, -lam), (self.param.data, 1.0 + lam), scale
                )
            else:
                signed, _ = self._grads(positions, weights, vote_targets(mask, lam))
                self.param.add_(signed.to(self.param.dtype), alpha=scale)
            self._memo = None
            return
        if withdraw and self.touch is None:
            raise RuntimeError("this lifter holds no votes to withdraw (released or never given)")
        if self.touch is None:
            if self._touch_sum > 0:
                raise RuntimeError("this lifter's sums were released: reset() it before lifting views again")
            self.touch = torch.zeros_like(self.param, dtype=torch.float32)
            self.shifted = torch.zeros_like(self.touch)
        assert self.shifted is not None  # (allocated and released with the touch)
        if lam != self.lam:  # shifted holds sum(-dL/dtheta) + lam * touch: re-shift to this view's lambda
            if self._touch_sum > 0:
                self.shifted.add_(self.touch, alpha=lam - self.lam)
            self.lam = lam
        before = self.touch.clone() if withdraw else None
        if self.corners is not None:
            self._touch_sum += self._scatter(
                positions, weights, key, mask, (self.touch, 1.0), (self.shifted, 1.0 + lam), sign
            )
        else:
            signed, touch = self._grads(positions, weights, vote_targets(mask, lam))
            self.shifted.add_(signed, alpha=sign).add_(touch, alpha=sign * lam)
            self.touch.add_(touch, alpha=sign)
            self._touch_sum += sign * float(touch.sum())
        if before is not None:
            # entries only this view touched are back at 0 but for rounding: exactly 0 again (a
            # rounding residue would count as touched, and without a prior 1e-9 / 1e-9 is any value)
            gone = self.touch <= 1e-5 * before
            self.touch.masked_fill_(gone, 0.0)
            self.shifted.masked_fill_(gone, 0.0)
            self._touch_sum = max(self._touch_sum, 0.0)
        self._memo = None
        self._update_param()

    def _update_param(self) -> None:
        """theta = (shifted - lam * touch) / (touch + prior); untouched entries (0 / prior) stay 0.
        Written through preallocated tables: a fresh table-sized tensor per view costs more (page
        faults) than the arithmetic."""
        assert self.touch is not None and self.shifted is not None  # (add_view allocated them)
        if self._value is None:
            self._value = torch.empty_like(self.touch)
        prior = 0.0
        if self.vote_prior > 0:
            # touched entries: touch >= 0, so the sum of its signs counts them (several times
            # cheaper than count_nonzero on a scattered pattern of zeros)
            touched = float(torch.sign(self.touch, out=self._value).sum())  # (exact below 2^24 entries)
            prior = self.vote_prior * self._touch_sum / max(touched, 1.0)
        value = torch.add(self.touch, prior, out=self._value)
        if prior <= 0:
            value.clamp_min_(1e-12)
        out = self.param.data if self.param.dtype == torch.float32 else torch.empty_like(self.touch)
        torch.add(self.shifted, self.touch, alpha=-self.lam, out=out).div_(value)
        if out is not self.param.data:
            self.param.copy_(out.to(self.param.dtype))

    def release(self) -> None:
        """Free the vote sums (three table-sized tensors) once the object is done; the field keeps
        its values. Lifting more views needs reset() first."""
        self.touch = self.shifted = self._value = None
        self._memo = None

    def reset(self) -> None:
        self.touch = self.shifted = self._value = None
        self.lam = 0.0
        self._touch_sum = 0.0
        self._memo = None
        with torch.no_grad():
            self.param.zero_()
