#!/usr/bin/env bash
# Creates ./.venv and installs hepdeploy with every extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: the CPU build (a local file on the project's machines). Left to
# the resolver, an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all]"
.venv/bin/python -c "import hepdeploy, onnxruntime, torch; print('hepdeploy', hepdeploy.__version__, 'torch', torch.__version__, 'onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
