#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit tests (no Ray) and integration tests
# (real Ray on this machine, tiny locally-built models). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
python -m pytest -q -p no:cacheprovider "$@"
