#!/usr/bin/env bash
# Create .venv and install fl_ray with its test tools. Idempotent; safe to re-run.
# On a machine without a CUDA GPU it installs the CPU build of torch first, so the package's
# torch range is already satisfied and no multi-GB CUDA wheel is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch>=2.4,<2.15"
  else
    python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  fi
fi
python -m pip install -q -e ".[dev]" 2>&1 | grep -v -e "is ignored" -e "^ *$" -e "!!" || true
python -c "import fl_ray, ray, peft, transformers, torch; print('fl_ray', fl_ray.__version__, '| ray', ray.__version__, '| torch', torch.__version__)"
