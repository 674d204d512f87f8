#!/usr/bin/env bash
# The GPU check (one script, one call on a lent GPU machine): the gpu-marked tests, a generated
# scene of 100 views at 512x512, nerfacto trained on the GPU, the benchmark (SAM ViT-H at random
# weights and the oracle; default path for two objects, reference path for the first), ns-train
# sa3d for two objects, sa3d-eval and ns-render of the masks; one table at the end.
#
#   scripts/gpu_check.sh [--setting gpu|cpu-tiny] [--out DIR] [--deadline SECONDS]
#
# Where nerfstudio is not installed (a bare GPU machine with torch), it installs the wheels of
# .whl/ (made here by scripts/gpu_wheels.sh) and this tree into a folder of its own first: no
# internet needed. The test suite runs it with --setting cpu-tiny.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
registered() { "$PY" -c "import nerfstudio; from importlib.metadata import entry_points; assert entry_points(group='nerfstudio.method_configs', name='sa3d')" 2>/dev/null; }
if ! registered; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_check: nerfstudio or the sa3d plugin is not installed and there is no .whl/ folder: run scripts/gpu_wheels.sh here first (or pip install -e .)" >&2
    exit 2
  fi
  SITE=${SA3D_SITE:-/tmp/sa3d_site}
  echo "gpu_check: installing .whl/ and this tree into $SITE"
  # one pip call: a second one into the same --target replaces the first one's bin/ (ns-train, ...)
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl . || exit 2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
  registered || { echo "gpu_check: the plugin is still not importable after installing .whl/" >&2; exit 2; }
fi
export PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH" PYTHONWARNINGS=ignore
exec "$PY" -m sa3d_ns.tools.gpu_check "$@"
