"""SA3D on splatfacto runs: the glue between gsplat / nerfstudio's splatfacto and the algorithm."""
