#!/usr/bin/env bash
# The project's test command: sets up .venv (if needed) with everything the tests use, lints, and
# runs the whole test suite (unit + slow end-to-end tests) on the CPU, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip check
.venv/bin/ruff check .
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
