"""2D promptable segmenters behind one small interface (see :mod:`.base`)."""

from sa3d_ns.segmenters.base import Segmentation, Segmenter

__all__ = ["Segmentation", "Segmenter"]
