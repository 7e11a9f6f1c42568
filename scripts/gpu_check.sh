#!/usr/bin/env bash
# GPU smoke test, for a machine with CUDA GPUs (nothing here runs on CPU-only machines):
#   1. the @pytest.mark.gpu tests: bf16 by default, device_map over the actor's GPUs, no
#      offload, 4-bit loading when bitsandbytes is installed;
#   2. a real federation: 2 silos x 1 round on a small local Llama with gpus per silo
#      (each silo 1 GPU when there are >= 2; with one GPU, silo transport on it and housing on CPU).
#   bash scripts/gpu_check.sh            # extra key=value arguments go to `fl-ray run`
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
GPUS=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$GPUS" -lt 1 ]; then
  echo "gpu_check: no CUDA GPU visible to torch ($(python -c 'import torch; print(torch.__version__)'))" >&2
  exit 1
fi
echo "gpu_check: $GPUS GPU(s)"
python -m pytest -q -m gpu tests/unit/test_cluster_config.py

WORK=$(mktemp -d /tmp/fl-ray-gpu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# "small model": the demo Llama at a size where the GPU does the work (hidden 512, 4 layers)
fl-ray build-base "$WORK/base" --arch llama --hidden 512 --layers 4 --heads 8 --intermediate 1376
fl-ray make-data "$WORK/data" --train 64 --eval 16
HOUSING_GPUS=$([ "$GPUS" -ge 2 ] && echo 1 || echo 0)
cat > "$WORK/recipe.yaml" <<YAML
run_name: gpu-check
output_dir: $WORK/runs
rounds: 1
base_model: {path: $WORK/base, dtype: auto}
lora: {r: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj]}
silos:
  - {name: transport, data_dir: $WORK/data/transport, gpus: 1, num_cpus: 1}
  - {name: housing, data_dir: $WORK/data/housing, gpus: $HOUSING_GPUS, num_cpus: 1}
train: {local_steps: 8, batch_size: 8, seq_len: 128, lr: 0.001}
output: {save_merged: false}
YAML
START=$(date +%s)
fl-ray run "$WORK/recipe.yaml" "$@"
python - "$WORK/runs/gpu-check" <<'PY'
import json, math, sys
from pathlib import Path
m = json.loads((Path(sys.argv[1]) / "rounds/00001/metrics.json").read_text())
assert m["contributed"] == ["housing", "transport"], m["contributed"]
for name, silo in m["silos"].items():
    loss = silo.get("train_loss")
    assert loss is not None and math.isfinite(loss), (name, silo)
print("gpu_check: round 1 ok:", {n: round(s["train_loss"], 4) for n, s in m["silos"].items()})
PY
echo "gpu_check: passed in $(( $(date +%s) - START )) s"
