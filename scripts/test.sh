#!/usr/bin/env bash
# The project's test command: sets up .venv (if needed) with everything the tests use, lints, and
# runs the whole test suite (unit + slow end-to-end tests) on the CPU, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
# the viewer's browser test drives Debian's chromium (headless) with Playwright
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "scripts/test.sh: the viewer test needs Debian's chromium: run 'sudo apt-get install chromium' first" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip check
.venv/bin/ruff check .
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
