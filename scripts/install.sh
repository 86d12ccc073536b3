#!/usr/bin/env bash
# Install mmada and its test tools into the current Python environment, with a torch that fits the machine:
#   * a torch that is already installed (CUDA, ROCm, MPS or CPU) is kept as it is;
#   * otherwise pip is asked what `pip install torch==2.13.0` would bring (`pip install --dry-run --report`):
#     if that includes nvidia-* packages (the CUDA build) and the machine has no NVIDIA GPU (no `nvidia-smi`,
#     no /dev/nvidia0), the CPU build is installed from the PyTorch CPU wheel index instead
#     (https://download.pytorch.org/whl/cpu, or $MMADA_TORCH_INDEX); with a GPU, or when pip would resolve a
#     CPU-only wheel anyway (e.g. a local wheel mirror), `torch==2.13.0` is installed as pip resolves it.
# Then `pip install -e ".[dev]"`. Override the pin with MMADA_TORCH_SPEC, the interpreter with PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TORCH_SPEC=${MMADA_TORCH_SPEC:-torch==2.13.0}
CPU_INDEX=${MMADA_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; }

if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "install.sh: keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
    report=$(mktemp)
    trap 'rm -f "$report"' EXIT
    cuda_build=no
    if "$PYTHON" -m pip install --quiet --dry-run --report "$report" "$TORCH_SPEC" >/dev/null 2>&1; then
        cuda_build=$("$PYTHON" -c 'import json, sys
names = [p["metadata"]["name"].lower() for p in json.load(open(sys.argv[1])).get("install", [])]
print("yes" if any(n.startswith("nvidia-") for n in names) else "no")' "$report")
    fi
    if [ "$cuda_build" = yes ] && ! has_gpu; then
        echo "install.sh: no NVIDIA GPU here; installing the CPU build of $TORCH_SPEC from $CPU_INDEX"
        if ! "$PYTHON" -m pip install --quiet --index-url "$CPU_INDEX" "$TORCH_SPEC"; then
            echo "install.sh: error: could not install $TORCH_SPEC from $CPU_INDEX; set MMADA_TORCH_INDEX to a" \
                 "reachable mirror of the PyTorch CPU wheels, or install torch first" >&2
            exit 1
        fi
    else
        echo "install.sh: installing $TORCH_SPEC as pip resolves it ($([ "$cuda_build" = yes ] && echo "CUDA build, GPU found" || echo "no CUDA packages"))"
        "$PYTHON" -m pip install --quiet "$TORCH_SPEC"
    fi
fi
"$PYTHON" -m pip install --quiet -e ".[dev]"

# The browser test (tests/test_serve_browser.py) drives Debian's Chromium through Playwright, which never
# downloads a browser: install the distribution's package where /usr/bin/chromium is missing (as root, or
# through password-less sudo; otherwise the test fails and says how to install it).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    as_root=""
    [ "$(id -u)" -eq 0 ] || as_root="sudo -n"
    echo "install.sh: installing Debian's chromium for the browser test"
    if ! { $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 ||
           { $as_root apt-get update -qq >/dev/null 2>&1 &&
             $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; }; then
        echo "install.sh: warning: could not install chromium (apt-get install chromium); the browser test will fail" >&2
    fi
fi
