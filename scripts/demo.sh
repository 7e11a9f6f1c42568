#!/usr/bin/env bash
# The whole demo on a fresh machine: install, build the tiny base model and the four departments'
# data locally (no hub), then run the federation on an embedded local Ray.
#   bash scripts/demo.sh                 # extra key=value arguments go to `fl-ray run`
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
[ -f demo_assets/base-llama/config.json ] || fl-ray build-base demo_assets/base-llama --arch llama
[ -f demo_assets/data/health/eval.jsonl ] || fl-ray make-data demo_assets/data
fl-ray run recipes/demo.yaml "run_name=demo-$(date +%Y%m%d-%H%M%S)" "$@"
