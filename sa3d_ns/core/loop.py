"""SA3D's cross-view self-prompting loop, over any radiance field (plain torch/numpy).

For each object, in turn, the loop visits training views in an order grown from the prompted view.
One step (:meth:`SA3DLoop.step`):

1. get the view's data from the radiance field (:class:`Scene`): the samples and volume weights of
   its rays, its depth, the image the 2D segmenter sees;
2. render the object's 3D mask there: the mask score of each pixel (the lifter's ``score``);
3. prompt the 2D segmenter: in the object's first view with the user's prompt (every candidate
   reviewed: stray regions left out, warnings, the candidate to lift), in later views with
   self-prompts drawn from the rendered score (``core.self_prompt``);
4. accept or reject a later view's 2D mask: regions that meet no positive score left out, its IoU
   with the rendered mask at least ``iou_threshold`` and no clicked point it sees left out; while
   no later view has agreed with the first mask, ``restart_after`` rejections in a row start the
   object again from those of their masks that agree with each other (restored if as many views
   disagree with the restart too: :meth:`SA3DLoop.outvoted`);
5. lift an accepted mask into the object's 3D mask (the lifter's ``add_view``);
6. record the view (:class:`~sa3d_ns.core.records.ViewRecord`), write its images and the
   summary; after an object's last view, bound its 3D mask by a box (``core.objects.object_box``).

The radiance-field side (a nerfacto NeRF today) is behind :class:`Scene`; the run's folder behind
:class:`~sa3d_ns.run_folder.RunFolder`; the 2D segmenter behind
:class:`~sa3d_ns.segmenters.base.Segmenter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from sa3d_ns.core.anchors import click_anchors, judge_anchors, leaves_out, seen_anchors
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.metrics import binarize_score, iou
from sa3d_ns.core.objects import object_box, surface_samples
from sa3d_ns.core.prompts import Prompt, check_inside, resolve_view
from sa3d_ns.core.records import ObjectState, ViewData, ViewRecord
from sa3d_ns.core.regions import keep_supported, review_first_masks
from sa3d_ns.core.self_prompt import select_self_prompts
from sa3d_ns.core.views import passes_order, view_order
from sa3d_ns.run_folder import RunFolder, save_candidates, save_view_images
from sa3d_ns.segmenters.base import Segmentation, Segmenter


class Scene(Protocol):
    """The radiance field's side of the loop: its training views, their data, the objects' boxes."""

    def image_names(self) -> list[str]:
        """Every training view's image file."""
        ...

    def image_size(self, view: int) -> tuple[int, int]:
        """Training view ``view``'s (width, height) in pixels of its image (the prompts' pixels)."""
        ...

    def camera_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """The training cameras' centres and viewing directions (N x 3 each)."""
        ...

    def view_data(self, view: int) -> ViewData:
        """What a view needs from the radiance field at the segmentation resolution: positions
        R x K x 3, weights R x K (its rays' samples), depth H x W, size (H, W), rgb H x W x 3 uint8
        (when rendered)."""
        ...

    def segment_input(self, view: int, data: ViewData) -> np.ndarray:
        """The image the 2D segmenter sees for ``view`` (H x W x 3 uint8)."""
        ...

    def footprint_key(self, k: int, view: int, data: ViewData) -> Hashable:
        """A key under which view ``view``'s footprint in object ``k``'s mask table may be kept
        (the same for every object of the same table layout)."""
        ...

    def mask_values(self, k: int, points: torch.Tensor) -> torch.Tensor:
        """Object ``k``'s 3D mask at ``points`` (N x 3, on the CPU) -> N values."""
        ...

    def mask_threshold(self) -> float:
        """Where a 3D mask is on: its values above this."""
        ...

    def set_bounds(self, k: int, box: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Object ``k``'s 3D box (min, max), or None: unbounded."""
        ...

    def flush(self) -> None:
        """Wait for writes in flight (caches), at an object's end."""
        ...


@dataclass
class LoopSettings:
    """The loop's settings (the pipeline config's fields of the same names; see its --help)."""

    num_prompts: int = 3
    prompt_distance_weight: float = 1.0
    iou_threshold: float = 0.5
    iou_binarize: str = "positive"
    neg_weight: float = 1.0
    neg_weight_first: float = 1.0
    view_order: str = "nearest"
    num_passes: int = 1
    pass_votes: str = "replace"
    pass_views: float = 1.0
    drop_stray_regions: bool = True
    anchor_check: bool = True
    first_mask_pick: str = "plausible"
    clip_first_mask: bool = False
    restart_after: int = 3
    save_view_images: bool = True

    @classmethod
    def of(cls, config) -> LoopSettings:
        """The settings of a config holding fields of the same names."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


def lifted(data: ViewData) -> torch.Tensor:
    """What the objects' 3D masks read per sample of a view: its ``samples`` where the scene gives
    them (a splat: each Gaussian's index), else the samples' positions (a NeRF's hash grid)."""
    return data["samples"] if "samples" in data else data["positions"]


def start_trial(disagreed: int, restart_after: int, on_trial: bool) -> str | None:
    """What the ``disagreed``-th later view to disagree with an object's unsettled start does:
    ``"restart"`` (look for a corroborated mask among the views that disagreed, ``SA3DLoop.outvoted``),
    ``"restore"`` (a restart on trial found no support: back to the first mask) or nothing
    (``restart_after`` 0: never; each only at exactly ``restart_after``)."""
    if restart_after <= 0 or disagreed != restart_after:
        return None
    return "restore" if on_trial else "restart"


def few_views_warning(counts: dict, views: int, iou_threshold: float) -> str | None:
    """What to tell the user when an object's 3D mask rests on few views (fewer than 2, or than a
    tenth of its later views, agreed with it): a wrong first mask, an object seen in few views, or
    one the segmenter cannot outline; None when enough views agreed."""
    later = views - counts.get("prompt", 0)
    accepted = counts.get("accepted", 0)
    if later <= 0 or accepted >= max(2, 0.1 * later):
        return None
    return (
        f"only {accepted} of {later} later views agreed with its 3D mask (IoU >= {iou_threshold:g}): it rests on "
        f"{accepted + counts.get('prompt', 0)} view(s). Look at the prompt view's mask (sa3d/views/): a wrong first "
        "mask, an object seen in few views or one the segmenter cannot outline. Prompt it again (more points, a box, "
        "another view) or lower --pipeline.iou-threshold."
    )


def format_duration(seconds: float) -> str:
    """e.g. 42 s, 3 min 05 s, 2 h 10 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class SA3DLoop:
    """The loop's state (one :class:`ObjectState` per object, the processed views' records) and
    its steps. ``segmenter()`` gives the 2D segmenter (built on first use), ``find_text(text,
    image, where)`` a text prompt's box, ``names()`` the objects' names and ``log`` takes messages
    (rich markup)."""

    def __init__(
        self,
        scene: Scene,
        settings: LoopSettings,
        objects: list[ObjectState],
        names: Callable[[], list[str]],
        segmenter: Callable[[], Segmenter],
        find_text: Callable[[str, np.ndarray, str], object] | None = None,
        log: Callable[[str], None] = print,
    ):
        self.scene, self.settings, self.objects = scene, settings, objects
        self.names, self.segmenter, self.find_text, self.log = names, segmenter, find_text, log
        self.records: list[ViewRecord] = []
        self.active: list[int] = []  # the objects segmented by this run, in turn
        self.run: RunFolder | None = None  # where views and the summary are written (None: nowhere)
        self.on_summary: Callable[[bool], None] | None = None  # writes summary.json (told whether complete)
        self.last_view: dict | None = None  # the last processed view's image, mask and prompt (the viewer shows it)
        self._started = time.perf_counter()  # (when the run's first view began: the log's time left)

    # ------------------------------------------------------------------ planning
    def start_objects(self, prompts: Sequence[Prompt], first: int = 0) -> None:
        """Plan the segmentation of objects ``first``, ``first + 1``, ... from their prompts: clear
        their masks and plan each visit order from its prompt's view (an index or file name of a
        training view)."""
        centres, directions = self.scene.camera_centres()
        names = self.scene.image_names()
        self.active, self.records = [], []
        for k, prompt in enumerate(prompts, start=first):
            start = resolve_view(prompt.view, names)
            check_inside(prompt, *self.scene.image_size(start))
            order = view_order(centres, start, self.settings.view_order, directions=directions)
            self.objects[k].restart(prompt, passes_order(order, self.settings.num_passes, self.settings.pass_views))
            self.scene.set_bounds(k, None)
            self.active.append(k)

    def start_from_camera(
        self, k: int, centre: np.ndarray, direction: np.ndarray, data: ViewData, mask: np.ndarray, prompt: Prompt
    ) -> None:
        """Start object ``k`` from its 2D ``mask`` in any camera (centre, viewing direction; its
        ``data`` as :meth:`Scene.view_data` gives it): lift the mask there, then plan every
        training view (self-prompted), nearest to that camera first."""
        centres, directions = self.scene.camera_centres()
        n = len(centres)
        order = view_order(
            np.concatenate([centres, centre[None]]),
            n,
            "nearest",
            directions=np.concatenate([directions, direction[None]]),
        )[1:]
        obj = self.objects[k]
        obj.restart(
            prompt, passes_order(order, self.settings.num_passes, self.settings.pass_views), camera_started=True
        )
        self.scene.set_bounds(k, None)
        positions, weights = data["positions"], data["weights"]
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).reshape(-1).to(weights.device)
        obj.lifter.add_view(lifted(data), weights, mask_t, self.settings.neg_weight_first)
        obj.surface_points = [surface_samples(positions, weights, mask_t).cpu()]
        obj.set_anchors(click_anchors(positions, weights, int(data["size"][1]), prompt.points[prompt.labels == 1]))
        self.active, self.records = [k], []

    @property
    def plan(self) -> list[tuple[int, int]]:
        """(object, step of that object's visit order) for every step of this run."""
        return [(k, j) for k in self.active for j in range(len(self.objects[k].order))]

    def run_steps(self, stop: Callable[[], bool] | None = None, on_step=None) -> list[ViewRecord]:
        """Process the remaining views of the plan; ``stop()`` is asked between views,
        ``on_step(record)`` is told after each."""
        for step in range(len(self.records), len(self.plan)):
            if stop is not None and stop():
                break
            rec = self.step(step)
            if on_step is not None:
                on_step(rec)
        return self.records

    def text_prompt_later(self, step: int) -> bool:
        """Whether an object that starts after ``step`` has a text prompt."""
        later = {k for k, local in self.plan[step + 1 :] if local == 0}
        prompts = [self.objects[k].prompt for k in later]
        return any(p is not None and p.text for p in prompts)

    # ------------------------------------------------------------------ one step
    def step(self, step: int) -> ViewRecord:
        """Process the ``step``-th view of the plan; returns its record."""
        cfg = self.settings
        k, local = self.plan[step]
        obj = self.objects[k]
        view, lifter = obj.order[local], obj.lifter
        first = local == 0 and not obj.camera_started  # (a viewer prompt was lifted before)
        t0 = time.perf_counter()
        data = self.scene.view_data(view)
        h, w = (int(x) for x in data["size"])
        t_data = time.perf_counter()
        key = self.scene.footprint_key(k, view, data)  # its footprint is every object's
        score = lifter.score(lifted(data), data["weights"], key=key).view(h, w).cpu()
        t_score = time.perf_counter()
        depth = data["depth"].view(h, w).cpu().float()
        image = self.scene.segment_input(view, data)
        t_render = time.perf_counter() - t0
        t_seg = time.perf_counter()
        seg = self.segmenter()
        seg.set_image(image, depth.numpy(), view_id=view)
        rec: ViewRecord = {
            "step": step,
            "object": self.names()[k],
            "view": view,
            "image": Path(self.scene.image_names()[view]).name,
            # render_s's parts: the view's data (rendered or read back), the 3D mask's score there
            "data_s": round(t_data - t0, 4),
            "score_s": round(t_score - t_data, 4),
        }
        if first:
            assert obj.prompt is not None
            width, height = self.scene.image_size(view)
            p = obj.prompt.scaled(w / width, h / height)
            if p.text is not None:
                if self.find_text is None:
                    raise SA3DError("This run cannot take text prompts (no text detector).")
                det = self.find_text(p.text, image, f"view {view} ({rec['image']})")
                p.box = det.box  # type: ignore[attr-defined]
                rec["text"] = {"text": p.text, **det.to_json()}  # type: ignore[attr-defined]
            result = seg.predict(p.points, p.labels, p.box, prior=None, multimask=True)
            rec["segment_s"] = round(time.perf_counter() - t_seg, 4)
            if seg.last_error:  # (oracle-noisy: the mistake it made here, for the record)
                rec["injected_error"] = seg.last_error
            review = self.review_first(result, p, depth.numpy(), p.mask_choice)  # (refuses a mask_choice it lacks)
            mask, choice = review.masks[review.choice], review.choice
            rec["candidates"] = [
                {"score": round(float(s), 4), "area": int(m.sum()), "warnings": sorted(w)}
                | ({"clipped_from": src} if clipped else {})
                for m, s, w, src, clipped in zip(
                    review.masks, review.scores, review.warnings, review.sources, review.clipped, strict=True
                )
            ]
            if review.warnings[choice]:
                rec["warnings"] = list(review.warnings[choice].values())
                self.warn_first_mask(rec, review, image)
            if not mask.any():
                raise SA3DError(
                    f"The prompt gave an empty mask in view {view} ({rec['image']}) with the {seg.name} segmenter. "
                    "Put positive points on the object (x = column, y = row, full-resolution pixels) or try another segmenter."
                )
            points, labels = p.points, p.labels
            rec.update(status="prompt", mask_choice=choice, scores=[round(float(s), 4) for s in review.scores])
            obj.set_anchors(click_anchors(data["positions"], data["weights"], w, p.points[p.labels == 1]))
            obj.start, obj.disagreed = (view, mask), 0  # (on trial until a later view agrees: ``outvoted``)
            neg = cfg.neg_weight_first
        else:
            pts = select_self_prompts(score, depth, cfg.num_prompts, cfg.prompt_distance_weight).numpy()
            points, labels = pts, np.ones(len(pts), dtype=np.int64)
            if len(pts) == 0:
                rec.update(status="skipped", reason="no positive mask score in this view")
                return self.finish(rec, image, None, points, labels, t_render, time.perf_counter() - t0)
            result = seg.predict(points, labels, None, prior=score.numpy(), multimask=len(pts) == 1)
            rec["segment_s"] = round(time.perf_counter() - t_seg, 4)
            if seg.last_error:  # (oracle-noisy: the mistake it made here, for the record)
                rec["injected_error"] = seg.last_error
            mask, _ = result.best()
            if cfg.drop_stray_regions:
                kept = keep_supported(mask, support=score.numpy() > 0, points=points)
                if kept.sum() < mask.sum():
                    rec["dropped_px"] = int(mask.sum() - kept.sum())
                mask = kept
            rec["iou"] = round(iou(binarize_score(score, cfg.iou_binarize), mask), 4)
            missed = []
            if cfg.anchor_check and len(obj.anchors):
                seen = seen_anchors(obj.anchors, data["positions"], data["weights"], w)
                missed = leaves_out(mask, seen)
                if rec["iou"] >= cfg.iou_threshold:
                    missed = self.judge_anchors(obj, rec, mask, seen, missed)
            if rec["iou"] < cfg.iou_threshold or missed:
                rec.update(status="rejected")
                if missed:
                    rec["reason"] = f"the mask leaves out the clicked point(s) {missed}, which this view sees"
                self.outvoted(obj, k, rec, mask, missed)  # (may start the object again: it lifts what it keeps)
                return self.finish(rec, image, mask, points, labels, t_render, time.perf_counter() - t0)
            else:
                rec.update(status="accepted")
                obj.disagreed, obj.outvoted, obj.dissent = -1, None, []  # (its start is settled)
                neg = cfg.neg_weight
        t1 = time.perf_counter()
        if self.lift(obj, view, data, mask, neg, key):
            rec["replaced"] = True  # (its vote of an earlier pass withdrawn: ``pass_votes``)
        rec["lift_s"] = round(time.perf_counter() - t1, 4)
        return self.finish(rec, image, mask, points, labels, t_render, time.perf_counter() - t0)

    def lift(self, obj: ObjectState, view: int, data: ViewData, mask: np.ndarray, neg: float, key: Hashable) -> bool:
        """Lift a view's 2D mask into the object's 3D mask (and keep its surface points for the
        box). A view lifted before (an earlier pass) has its earlier vote withdrawn first when
        ``pass_votes`` is "replace": the later mask, made from the 3D mask all the views built,
        takes its place. Returns whether a vote was replaced."""
        device = data["weights"].device
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).reshape(-1).to(device)
        keep = self.settings.pass_votes == "replace" and self.settings.num_passes > 1  # (a later pass replaces)
        earlier = obj.votes.get(view)  # (held only when kept)
        if earlier is not None:
            old, old_neg, _ = earlier
            old_t = torch.from_numpy(np.ascontiguousarray(old)).reshape(-1).to(device)
            obj.lifter.add_view(lifted(data), data["weights"], old_t, old_neg, key=key, withdraw=True)
        obj.lifter.add_view(lifted(data), data["weights"], mask_t, neg, key=key)
        points = surface_samples(data["positions"], data["weights"], mask_t).cpu()
        if earlier is not None:
            obj.surface_points[earlier[2]] = points
        else:
            obj.surface_points.append(points)
        if keep:
            index = earlier[2] if earlier is not None else len(obj.surface_points) - 1
            obj.votes[view] = (np.array(mask, dtype=bool), float(neg), index)
        return earlier is not None

    def outvoted(self, obj: ObjectState, k: int, rec: ViewRecord, mask: np.ndarray, missed: list[int]) -> None:
        """A later view rejected while the object's start is unsettled (no later view has agreed
        with it yet) counts against that start (``start_trial``). At the ``restart_after``-th, the
        object starts again from the mask of one of those views, if one is corroborated: lifted
        alone, its 3D mask agrees (IoU test) with another of them, and it holds every clicked point
        its view sees. The first mask, one view's answer, is then likely the wrong one (merged with
        a neighbour, a part). Never with a segmenter that answers from the rendered 3D mask
        (``Segmenter.uses_prior``: ``weightfree``): its later masks are not independent of the first
        one (on the touching scene its tile's disagreeing masks agreed with each other, and a restart
        from them cost the tile 0.22 -> 0.04 mIoU). If as many later views disagree with the new
        start, the first mask is restored and kept."""
        if obj.disagreed < 0 or obj.start is None or self.segmenter().uses_prior:
            return
        obj.disagreed += 1
        obj.dissent.append((rec["view"], mask, bool(mask.any()) and not missed))
        action = start_trial(obj.disagreed, self.settings.restart_after, obj.outvoted is not None)
        name, n = rec["object"], obj.disagreed
        if action == "restart":
            datas = {v: self.scene.view_data(v) for v, _, _ in obj.dissent}  # (read once for every trial)
            first, best = obj.start, self.corroborated(obj, k, datas)
            if best is None:  # (nothing corroborated: the first mask stays, once and for all)
                self.relift(obj, k, first)
                obj.disagreed, obj.dissent = -1, []
                return
            (view, chosen), agree = best
            self.relift(obj, k, (view, chosen), datas[view])
            for u, other in agree:  # (the views that agree with it count as accepted)
                self.lift(obj, u, datas[u], other, self.settings.neg_weight, self.scene.footprint_key(k, u, datas[u]))
            obj.outvoted, obj.start, obj.disagreed, obj.dissent = first, (view, chosen), 0, []
            agreeing = {u for u, _ in agree}
            for r in [*self.records, rec]:
                if r["object"] != name or r.get("status") != "rejected" or r["view"] not in agreeing | {view}:
                    continue
                r["status"] = "accepted"
                if r["view"] == view:
                    r["restart_from"] = first[0]
                    r["reason"] = (
                        f"restarted from here: the {n} later views after the first mask (view {first[0]}) all "
                        "disagreed with it, and this one's mask agrees with another of them"
                    )
                else:
                    r["restart_with"] = view
                    r["reason"] = f"agrees with the restart from view {view}"
            self.log(
                f"[yellow]sa3d: {name}: the first mask (view {first[0]}) is outvoted: the {n} later views after it all "
                f"disagreed with it, and view {view}'s mask agrees with {len(agree)} of them. Starting again from those "
                f"masks; the first mask is likely wrong (see sa3d/views/). If the next {n} views disagree with the "
                "restart too, the first mask is restored.[/yellow]"
            )
        elif action == "restore":
            assert obj.outvoted is not None  # (start_trial restores only a start on trial)
            first, tried = obj.outvoted, obj.start
            self.relift(obj, k, first)
            obj.start, obj.outvoted, obj.disagreed, obj.dissent = first, None, -1, []
            for r in self.records:  # (the restart's records: no longer in the 3D mask)
                if (
                    r["object"] == name
                    and r.get("status") == "accepted"
                    and tried[0]
                    in (
                        r.get("restart_with"),
                        r["view"] if "restart_from" in r else None,
                    )
                ):
                    reason = r.get("reason", "restarted from here")
                    r.update(status="rejected", reason=f"{reason}; undone at view {rec['view']}")
            rec["restored"] = first[0]
            self.log(
                f"[yellow]sa3d: {name}: the {n} views since the restart from view {tried[0]} all disagreed with it too: "
                f"back to the first mask (view {first[0]}).[/yellow]"
            )

    def relift(self, obj: ObjectState, k: int, start: tuple[int, np.ndarray], data: ViewData | None = None) -> None:
        """Empty the object's 3D mask and lift one view's mask (``data``: its view's, if at hand)
        into it, as a first view."""
        obj.lifter.reset()
        obj.surface_points, obj.votes = [], {}
        data = self.scene.view_data(start[0]) if data is None else data
        self.lift(
            obj, start[0], data, start[1], self.settings.neg_weight_first, self.scene.footprint_key(k, start[0], data)
        )

    def corroborated(self, obj: ObjectState, k: int, datas: dict[int, ViewData]):
        """Of the views that disagreed with the first mask, the one whose mask, lifted alone, agrees
        (IoU test) with the most of the others' masks (at least one; ties: the higher mean IoU),
        with those it agrees with: ((view, mask), [(view, mask), ...]); None when none does.
        Leaves the lifter holding the last mask tried. ``datas``: those views' data."""
        cfg, best, best_key = self.settings, None, (0, 0.0)
        for v, m, eligible in obj.dissent:
            if not eligible:
                continue
            self.relift(obj, k, (v, m), datas[v])
            ious, agree = [], []
            for u, other, _ in obj.dissent:
                if u == v:
                    continue
                data = datas[u]
                h, w = (int(x) for x in data["size"])
                score = obj.lifter.score(lifted(data), data["weights"], key=self.scene.footprint_key(k, u, data))
                ious.append(iou(binarize_score(score.view(h, w).cpu(), cfg.iou_binarize), other))
                if ious[-1] >= cfg.iou_threshold:
                    agree.append((u, other))
            key = (len(agree), float(np.mean(ious)) if ious else 0.0)
            if key[0] >= 1 and key > best_key:
                best, best_key = ((v, m), agree), key
        return best

    def judge_anchors(self, obj: ObjectState, rec: ViewRecord, mask, seen: list, missed: list[int]) -> list[int]:
        """A view that passed the IoU test judges the anchors (``core.anchors.judge_anchors``): the
        ones it shows are trusted, those left out by the first views that agree with the 3D mask
        are dropped (said in the log and the record); returns the anchors it still leaves out."""
        obj.anchor_doubts, drop = judge_anchors(obj.anchor_doubts, seen, missed)
        if not drop:
            return missed
        keep = [i for i in range(len(obj.anchors)) if i not in drop]
        obj.anchors, obj.anchor_doubts = obj.anchors[keep], [obj.anchor_doubts[i] for i in keep]
        rec["anchors_dropped"] = len(drop)
        self.log(
            f"[yellow]sa3d: {rec['object']}: {len(drop)} clicked point(s) left out by every view so far that agrees with "
            f"the 3D mask (the last: view {rec['view']}, IoU {rec.get('iou', 0.0):.3f}): the NeRF's surface at the click is "
            "likely elsewhere (a floater in front of the object); later views are no longer checked against it.[/yellow]"
        )
        return leaves_out(mask, [seen[i] for i in keep])

    def review_first(self, result: Segmentation, prompt: Prompt, depth: np.ndarray, choice: int | None = None):
        """The segmenter's candidates for a user's prompt, reviewed (stray regions left out,
        warnings, the candidate to lift): see ``sa3d_ns.core.regions.review_first_masks``."""
        cfg = self.settings
        return review_first_masks(
            result.masks, result.scores, prompt.points, prompt.labels, prompt.box, depth,
            drop_stray=cfg.drop_stray_regions, pick=cfg.first_mask_pick, choice=choice, clip=cfg.clip_first_mask,
        )  # fmt: skip

    def warn_first_mask(self, rec: ViewRecord, review, image: np.ndarray) -> None:
        """Say in the log that the first mask may not be the clicked object, and what to do."""
        where = ""
        if self.run is not None and self.settings.save_view_images:
            save_candidates(self.run, dict(rec), image, review.masks, review.choice)
            where = f" (the candidates: {self.run.views}/{rec['step']:04d}_{rec['object']}_candidate*.png)"
        lines = [
            f"  candidate {i}: score {float(s):.3f}, {int(m.sum())} px"
            + (f", warnings: {', '.join(sorted(w))}" if w else ", no warning")
            + (" (chosen)" if i == review.choice else "")
            for i, (m, s, w) in enumerate(zip(review.masks, review.scores, review.warnings, strict=True))
        ]
        self.log(
            f"[yellow]sa3d: the first mask of '{rec['object']}' in view {rec['view']} ({rec['image']}) may not be the "
            f"clicked object: {'; '.join(rec.get('warnings', []))}.[/yellow]\n" + "\n".join(lines) + "\n"
            f'  If it is wrong, pick another with "mask_choice": N in the prompt file, or add clicks (a negative '
            f"click, label 0, on what does not belong) and run again{where}."
        )

    def finish(self, rec: ViewRecord, image, mask, points, labels, t_render: float, t_total: float) -> ViewRecord:
        """Record a processed view (and at an object's last view, free its vote sums and bound its
        3D mask), write its images and the summary, and log it."""
        k, local = self.plan[rec["step"]]
        obj = self.objects[k]
        if local == len(obj.order) - 1:
            t_end = time.perf_counter()
            self.scene.flush()
            obj.lifter.release()
            pts = torch.cat(obj.surface_points) if obj.surface_points else torch.zeros((0, 3))
            if len(pts):
                with torch.no_grad():
                    values = self.scene.mask_values(k, pts)
                self.scene.set_bounds(k, object_box(pts, values, self.scene.mask_threshold()))
            obj.surface_points, obj.votes = [], {}
            rec["object_end_s"] = round(time.perf_counter() - t_end, 4)  # (writes waited for, the box)
        rec.update(
            points=np.round(points, 1).tolist(),
            labels=[int(x) for x in labels],
            render_s=round(t_render, 4),
            total_s=round(t_total, 4),
        )
        self.records.append(rec)
        self.last_view = {"image": image, "mask": mask, "points": points, "labels": labels}
        t_write = time.perf_counter()
        if self.run is not None and self.settings.save_view_images:
            save_view_images(self.run, dict(rec), image, mask, points, labels)
        total = len(self.plan)
        if self.on_summary is not None:
            self.on_summary(len(self.records) == total)
        rec["write_s"] = round(time.perf_counter() - t_write, 4)  # (after total_s: the next summary holds it)
        if local == len(obj.order) - 1 and len(obj.order) > 1:
            warning = few_views_warning(self.object_summary(k)["counts"], len(obj.order), self.settings.iou_threshold)
            if warning:
                self.log(f"[yellow]sa3d: {rec['object']}: {warning}[/yellow]")
        done = len(self.records)
        if done == 1:
            self._started = time.perf_counter() - t_total
        left = (time.perf_counter() - self._started) / done * (total - done)
        eta = f" (~{format_duration(left)} left)" if done < total else ""
        iou_txt = f" IoU {rec['iou']:.3f}" if "iou" in rec else ""
        what = f"{rec['object']}: " if len(self.objects) > 1 else ""
        self.log(f"sa3d: {what}view {done}/{total} (#{rec['view']} {rec['image']}): {rec.get('status')}{iou_txt}{eta}")
        return rec

    # ------------------------------------------------------------------ the record
    def object_summary(self, k: int) -> dict:
        """Object ``k``'s prompt, counts and every processed view's record."""
        name = self.names()[k]
        records = [r for r in self.records if r["object"] == name]
        counts = {s: sum(r.get("status") == s for r in records) for s in ("prompt", "accepted", "rejected", "skipped")}
        obj = self.objects[k]
        return {
            "name": name,
            "prompt": obj.prompt.to_json() if obj.prompt else None,
            "views_total": len(obj.order),
            "views_done": len(records),
            "counts": counts,
            "first_mask_warnings": next((r.get("warnings", []) for r in records if r.get("status") == "prompt"), []),
            "warnings": (
                [w for w in [few_views_warning(counts, len(obj.order), self.settings.iou_threshold)] if w]
                if len(records) == len(obj.order)
                else []
            )
            + [
                f"its first mask (view {r['restart_from']}) was outvoted by the later views and replaced by view "
                f"{r['view']}'s ({r['image']}): the prompt view's mask (sa3d/views/) is likely wrong"
                for r in records
                if "restart_from" in r and r.get("status") == "accepted"
            ],
            "stray_px_dropped": sum(r.get("dropped_px", 0) for r in records),
            "views": records,
        }
