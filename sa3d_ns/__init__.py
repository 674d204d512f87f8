"""sa3d_ns: SA3D (Segment Anything in 3D with NeRFs) for nerfstudio.

The algorithm lives in :mod:`sa3d_ns.core` (plain torch/numpy), the 2D segmenters in
:mod:`sa3d_ns.segmenters`, and the nerfstudio glue in :mod:`sa3d_ns.nerf`.
"""

__version__ = "0.1.0"
