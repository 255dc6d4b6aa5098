#!/usr/bin/env bash
# Set up a virtual environment (once) and run the demo or the tests.
#   bash run.sh demo [demo options]    e.g. bash run.sh demo --out out/demo
#   bash run.sh test [pytest options]
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
# The NATS transport test needs a real nats-server (Debian package); install it when we can.
if [ "$cmd" = test ] && ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server) \
            >/dev/null 2>&1 || echo "run.sh: could not install nats-server; the NATS test will skip" >&2
    else
        echo "run.sh: nats-server missing (apt-get install nats-server); the NATS test will skip" >&2
    fi
fi
case "$cmd" in
    demo) exec "$VENV/bin/bluesky-symdenoise" demo "$@" ;;
    test) exec "$VENV/bin/python" -m pytest -q "$@" ;;
    *) echo "usage: bash run.sh demo|test [options]" >&2; exit 2 ;;
esac
