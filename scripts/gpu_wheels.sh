#!/usr/bin/env bash
# The wheels a bare GPU machine (CPython 3.12 with torch, numpy, opencv, rich, ... but no
# nerfstudio; the device tool's machines) lacks for scripts/gpu_check.sh, downloaded here into
# .whl/ (git-ignored; ~23 MB): only what the product's import paths load (found by recording every
# module that ns-train, ns-render, sa3d-eval, the benchmark and the tests import), not everything
# pip's metadata names. gpu_check.sh installs them with --no-deps into a folder of its own.
#
#   scripts/gpu_wheels.sh [PYTHON_VERSION (default 3.12)]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-3.12}
rm -rf .whl; mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
dl() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$VERSION" --implementation cp "${PLAT[@]}" -d .whl "$@"; }
# pure python: nerfstudio and what its import paths load (viewer: viser; splatfacto: gsplat; render: mediapy -> IPython)
dl nerfstudio==1.1.5 nerfacc==0.5.2 gsplat==1.4.0 tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1 \
   viser==0.2.7 splines==0.3.0 tensorly==0.10.0 pytorch-msssim==1.0.0 pyquaternion==0.9.9 appdirs==1.4.4 \
   pathos==0.3.5 ppft==1.7.8 dill==0.4.1 mediapy==1.2.7 ipython==9.18.1 traitlets==5.16.1 segment-anything==1.0
# compiled (fpsample: 1.0.2 is an sdist only; 0.3.3 has wheels and the function nerfstudio calls)
dl msgspec==0.22.0 websockets==17.4 rawpy==0.28.0 fpsample==0.3.3
du -sh .whl
