"""The SA3D algorithm in plain torch/numpy: no nerfstudio, no segmentation model imports."""
