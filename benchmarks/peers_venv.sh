#!/usr/bin/env bash
# Build the virtual environment of the peer libraries for benchmarks/peers.py.
#
# The venv sees the system site-packages (torch, numpy, scipy, scikit-learn and deepcurvature
# installed editable), and the constraint keeps pip from replacing the CPU torch. deepcurvature
# itself never depends on these packages.
#
# Usage: bash benchmarks/peers_venv.sh [VENV_DIR]   (default /work/peers-venv)
# Then:  VENV_DIR/bin/python benchmarks/peers.py [--quick] [--workload cnn-bn|mlp-digits]
set -euo pipefail
VENV="${1:-/work/peers-venv}"
TORCH_VERSION="$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
python -m venv --system-site-packages "$VENV"
CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==${TORCH_VERSION}" > "$CONSTRAINT"
"$VENV/bin/pip" install -c "$CONSTRAINT" \
    pyhessian hessian-eigenthings curvlinops-for-pytorch backpack-for-pytorch
"$VENV/bin/python" -c "import pyhessian, hessian_eigenthings, curvlinops, backpack, deepcurvature; print('peers venv ok')"
