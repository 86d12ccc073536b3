#!/usr/bin/env bash
# Install mmada and its test tools into the current Python environment.
# Where no torch is installed, pin the CPU build (torch==2.13.0) so that a plain `pip install` does not
# pull a multi-GB CUDA build; an existing torch (CUDA, ROCm, MPS) is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".[dev]"
