#!/usr/bin/env bash
# Set up a virtual environment (once) and run the demo or the tests.
#   bash run.sh demo [demo options]    e.g. bash run.sh demo --out out/demo
#   bash run.sh test [pytest options]  e.g. bash run.sh test -m fast (the inner loop)
# test first runs ruff (package, sim_iocs, bench, tests) and mypy (package, sim_iocs) and
# fails if either does; SKIP_LINT=1 bash run.sh test ... skips them (inner loop only).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# torch first, pinned: a CPU wheel of this version is what the package is tested with and
# avoids pulling a multi-GB CUDA build; pyproject asks only torch>=2.4.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
fi
if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    touch "$VENV/.installed"
fi
cmd=${1:-test}
shift || true
# System packages the tests use (Debian): nats-server for the NATS transport tests,
# postgresql for the PostgreSQL-backed Tiled tests; Xvfb and
# the X libraries of Qt's xcb platform for the live-view window tests. Installed when we can.
SYSTEM_PACKAGES="nats-server postgresql xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0
    libxcb-render-util0 libxkbcommon-x11-0"
if [ "$cmd" = test ]; then
    missing=""
    for pkg in $SYSTEM_PACKAGES; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                $missing) >/dev/null 2>&1 \
                || echo "run.sh: could not install$missing; tests that need them skip" >&2
        else
            echo "run.sh: missing$missing (apt-get install$missing); tests that need them" \
                "skip or fall back (Qt offscreen)" >&2
        fi
    fi
fi
case "$cmd" in
    demo) exec "$VENV/bin/bluesky-symdenoise" demo "$@" ;;
    test)
        if [ "${SKIP_LINT:-0}" != 1 ]; then
            "$VENV/bin/python" -m ruff check bluesky_symdenoise sim_iocs bench tests
            "$VENV/bin/python" -m mypy bluesky_symdenoise sim_iocs
        fi
        exec "$VENV/bin/python" -m pytest -q "$@" ;;
    *) echo "usage: bash run.sh demo|test [options]" >&2; exit 2 ;;
esac
