#!/usr/bin/env bash
# Run a recipe on a running Ray cluster as a Ray job, follow its logs, exit with its status.
#   scripts/submit.sh RECIPE [key=value ...] [--address URL] [--no-wait]
# Same as `ray job submit --working-dir . -- fl-ray run RECIPE [key=value ...]`, except that the
# exit code is the job's: 0 SUCCEEDED, the driver's own code (2: recipe refused) or 1 FAILED,
# 3 STOPPED (see fl_ray/cli_cluster.py). The jobs API address comes from --address, else
# RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265 (e.g. the tunnel of `ray dashboard
# cluster.yaml`). Token auth: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<token file>.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)   # the repository is the job's working directory
if [ -x "$ROOT/.venv/bin/fl-ray" ]; then . "$ROOT/.venv/bin/activate"; fi
exec fl-ray submit --working-dir "$ROOT" "$@"
