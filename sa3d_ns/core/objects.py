"""Several objects in one run: names, colours, and which object owns a point.

Each object has its own mask field m_k(x). Where several are on at once, the point belongs to the
object with the largest value only: the others' values there are capped at the threshold, so every
rendered mask, render and export of one object excludes the points of the others.
"""

from __future__ import annotations

import colorsys
import re

import torch

from sa3d_ns.core.errors import SA3DError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
FIRST_COLOR = (1.0, 0.2, 0.2)


def check_name(name, source: str = "prompt") -> str:
    """An object name usable in output names and file names, or a clear error."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name == "all":
        raise SA3DError(
            f"Invalid object name {name!r} in {source}: use 1-40 letters, digits, '_' or '-', starting with a "
            "letter or digit ('all' is reserved), e.g. \"red_ball\"."
        )
    return name


def check_unique(names: list[str], source: str = "prompt") -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise SA3DError(f'Object name "{n}" is used twice in {source}; give every object its own "name".')
        seen.add(n)


def palette(n: int) -> list[tuple[float, float, float]]:
    """n distinct, saturated colours; the first is the single-object overlay red."""
    colors = [FIRST_COLOR]
    golden = 0.618033988749895
    hue = 0.0
    while len(colors) < n:
        hue = (hue + golden) % 1.0
        colors.append(tuple(round(c, 3) for c in colorsys.hsv_to_rgb((hue + 0.33) % 1.0, 0.85, 0.95)))
    return colors[:n]


def exclusive(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """values ... x K (one column per object) -> the same, with every object but the largest
    capped at ``threshold`` at each point, so that at most one object is on (> threshold) there.
    With one object the values are unchanged."""
    if values.shape[-1] == 1:
        return values
    owner = values.argmax(dim=-1, keepdim=True)
    mine = torch.zeros_like(values, dtype=torch.bool).scatter_(-1, owner, True)
    return torch.where(mine, values, values.clamp(max=threshold))


def owner(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """values ... x K -> the index of the object that owns each point, -1 where none is on."""
    best, idx = values.max(dim=-1)
    return torch.where(best > threshold, idx, torch.full_like(idx, -1))
