"""``python -m sa3d_ns.tools.contact_sheet RUN_DIR OUT.png``: one image with every view's 2D mask
and prompt points (the per-view images an sa3d run writes to RUN_DIR/sa3d/views)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sa3d_ns.run_folder import RunFolder


def contact_sheet(run_dir: Path, out: Path, tile: int = 192, columns: int = 8) -> Path:
    views = RunFolder(Path(run_dir)).views
    files = sorted(views.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no view images in {views}")
    rows = math.ceil(len(files) / columns)
    sheet = np.full((rows * tile, min(columns, len(files)) * tile, 3), 255, np.uint8)
    for k, f in enumerate(files):
        img = np.asarray(Image.open(f).convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR))
        r, c = divmod(k, columns)
        sheet[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = img
    Image.fromarray(sheet).save(out)
    return out


if __name__ == "__main__":
    print(contact_sheet(Path(sys.argv[1]), Path(sys.argv[2])))
