"""The loop's records: one per object being segmented (:class:`ObjectState`), a view's data from
the radiance field (:class:`ViewData`) and one record per processed view (:class:`ViewRecord`,
the dict that summary.json keeps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Required, TypedDict

import torch

from sa3d_ns.core.lifting import MaskLifter
from sa3d_ns.core.prompts import Prompt


def no_anchors() -> torch.Tensor:
    return torch.zeros((0, 3))


@dataclass
class ObjectState:
    """What the loop keeps for one object: its lifter (which holds the 3D mask's table), its
    prompt, the training views it visits in turn, the surface points its lifted masks saw (its
    3D box is bounded from them at its last view) and its clicks' surface points (anchors)."""

    lifter: MaskLifter
    prompt: Prompt | None = None
    order: list[int] = field(default_factory=list)
    surface_points: list[torch.Tensor] = field(default_factory=list)
    anchors: torch.Tensor = field(default_factory=no_anchors)
    anchor_doubts: list[int] = field(default_factory=list)  # per anchor (core.anchors.judge_anchors)
    camera_started: bool = False  # prompted in a viewer camera: lifted there before its first training view
    # The start's trial (``core.loop.SA3DLoop.outvoted``): the training view and 2D mask the 3D mask
    # started from, the later views that disagreed with it since (-1: settled, a view agreed or
    # the start was restored), and the user's first mask while a later view's is tried in its place.
    start: tuple[int, Any] | None = None
    disagreed: int = -1
    outvoted: tuple[int, Any] | None = None
    dissent: list[tuple[int, Any, bool]] = field(default_factory=list)  # (view, mask, holds the clicks) of those views
    # The training views lifted into the 3D mask: view -> (its 2D mask, its negative weight, its
    # surface points' index in ``surface_points``), so a later pass can replace a view's vote.
    votes: dict[int, tuple[Any, float, int]] = field(default_factory=dict)

    def restart(self, prompt: Prompt, order: list[int], camera_started: bool = False) -> None:
        """Segment the object afresh: an empty mask, the new prompt and visit order."""
        self.lifter.reset()
        self.prompt, self.order, self.camera_started = prompt, list(order), camera_started
        self.surface_points, self.votes = [], {}
        self.set_anchors(no_anchors())
        self.start, self.disagreed, self.outvoted, self.dissent = None, -1, None, []

    def set_anchors(self, anchors: torch.Tensor) -> None:
        """The clicks' surface points (N x 3), none of them judged yet."""
        self.anchors, self.anchor_doubts = anchors, [0] * len(anchors)


class ViewData(TypedDict, total=False):
    """What a view needs from the radiance field (``core.loop.Scene.view_data``), at the
    segmentation resolution: its rays' samples (the heaviest K of each of R = H x W rays), depth and
    size, and the rendered image when the segmenter sees it. The same for every object."""

    positions: Required[torch.Tensor]  # R x K x 3
    weights: Required[torch.Tensor]  # R x K volume weights
    depth: Required[torch.Tensor]  # H x W
    size: Required[torch.Tensor]  # [H, W]
    rgb: torch.Tensor  # H x W x 3 uint8
    samples: torch.Tensor  # R x K: what the 3D mask reads per sample when it is not its position (a Gaussian's index)


Status = Literal["prompt", "accepted", "rejected", "skipped"]


class ViewRecord(TypedDict, total=False):
    """One processed view, as summary.json keeps it (the optional keys only where they apply)."""

    step: Required[int]  # the run's step (views of every object, in turn)
    object: Required[str]
    view: Required[int]  # training view index
    image: Required[str]  # its image file's name
    status: Status  # (set once the view is decided)
    iou: float  # a later view's 2D mask against the rendered 3D mask
    reason: str  # why a view was rejected or skipped, beyond its IoU
    points: list[list[float]]  # the prompt points (segmentation pixels)
    labels: list[int]
    segment_s: float
    lift_s: float
    render_s: float  # the view's data, its score and the segmenter's input
    data_s: float  # (of render_s) the view's data: rendered, or read from the cache
    score_s: float  # (of render_s) the 3D mask's score in the view
    total_s: float  # the step, up to its record (not write_s)
    write_s: float  # its images and summary.json written, after total_s
    object_end_s: float  # an object's last view: cache writes waited for, its 3D box (not in total_s)
    # the prompted view
    text: dict[str, Any]  # a text prompt: its box and scores
    candidates: list[dict[str, Any]]  # each candidate's score, area and warnings
    warnings: list[str]  # the chosen candidate's warnings
    mask_choice: int
    scores: list[float]
    # later views
    dropped_px: int  # pixels of stray regions left out before lifting
    anchors_dropped: int  # clicks' surface points no longer checked from this view on (core.anchors)
    replaced: bool  # a later pass's mask took the place of this view's earlier vote (``pass_votes``)
    restart_from: int  # the object started again from this view's mask, in place of that first view's
    restart_with: int  # this view's mask agreed with that restart view's and was lifted with it
    restored: int  # the restart was undone here: back to that first view's mask
    injected_error: str  # oracle-noisy: the mistake it made here
