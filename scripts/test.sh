#!/usr/bin/env bash
# The project's test command: sets up .venv (if needed) with everything the tests use, lints, and
# runs the whole test suite (unit + slow end-to-end tests) on the CPU, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian programs the tests run: chromium (the viewer's browser test, driven by Playwright), ffmpeg
# (ns-render's videos), colmap (ns-process-data on a capture)
MISSING=()
for prog in chromium ffmpeg colmap; do command -v "$prog" >/dev/null 2>&1 || MISSING+=("$prog"); done
if [ ${#MISSING[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${MISSING[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${MISSING[@]}" >/dev/null; }
  else
    echo "scripts/test.sh: the tests need Debian's ${MISSING[*]}: run 'sudo apt-get install ${MISSING[*]}' first" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip check
# numpy 2 in a folder of its own: the tests write and read checkpoints as a numpy-2 environment does
[ -d .venv/numpy2/numpy ] || .venv/bin/python -m pip install -q --no-deps --target .venv/numpy2 numpy==2.3.5
.venv/bin/ruff check .
# the static type check nerfstudio's own CI keeps (pyright, basic mode: [tool.pyright] in pyproject.toml)
.venv/bin/pyright
# Every test but the extended ones (~25 min on 2 cores) unless a -m selection is given; CI runs
# all in one go, with scripts/test.sh -m "extended or not extended" (~40 min more: the extended
# ones also run scripts/gpu_check.sh in its CPU setting).
# pytest's folders go under ${TMPDIR:-/tmp}: a run writes a few GB there (nerfacto checkpoints,
# removed as each module ends); say so up front when the disk is nearly full.
FREE_GB=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print int($4 / 1048576)}')
if [ "${FREE_GB:-0}" -lt 8 ]; then
  echo "scripts/test.sh: warning: only ${FREE_GB} GB free under ${TMPDIR:-/tmp}; the tests write up to ~4 GB there. Free some space or set TMPDIR to a roomier folder." >&2
fi
SELECT=(-m "not extended")
for arg in "$@"; do [ "$arg" = "-m" ] && SELECT=(); done
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m pytest -q -p no:cacheprovider "${SELECT[@]}" "$@"
