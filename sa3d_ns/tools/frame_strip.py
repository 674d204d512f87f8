"""``python -m sa3d_ns.tools.frame_strip VIDEO.mp4 OUT.png [FRAMES]``: evenly spaced frames of a
video (e.g. an ``ns-render`` video of an sa3d run), one under the other, as one image."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def frame_strip(video: Path, out: Path, frames: int = 4) -> Path:
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if total <= 0:
        raise FileNotFoundError(f"no frames in {video}")
    rows = []
    for index in np.linspace(0, total - 1, min(frames, total)).round().astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = cap.read()
        if ok:
            rows.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    Image.fromarray(np.concatenate([x for r in rows for x in (r, gap)][:-1])).save(out)
    return out


if __name__ == "__main__":
    print(frame_strip(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 4))
