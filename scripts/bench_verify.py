"""Benchmark: `verify_run` on a synthesised 1,000-round, 4-silo signed run (target < 10 s).

The run is real in every part but training (see fl_ray/receipts/synthetic.py): demo-size LoRA
adapter (Llama hidden 128, 2 layers, r=8 on q,k,v,o,gate,up,down; shapes from
fl_ray.model.initial_adapter_state), real keystores and EIP-712 signatures, real fedavg merges,
files written by RunDir. Verification includes recomputing every merge.

    python scripts/bench_verify.py [--rounds 1000] [--silos 4] [--dir /dev/shm/...] [--keep]

Prints one JSON object; ``verify_seconds`` is the figure the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SILO_NAMES = ["transport", "housing", "revenue", "health", "education", "justice", "water", "parks"]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def demo_llama_config() -> dict:
    """The demo base's architecture (fl-ray build-base defaults), as config.json content."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    return config.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--silos", type=int, default=4)
    parser.add_argument("--dir", help="where to write the run (default: a temp dir, in RAM if any)")
    parser.add_argument("--keep", action="store_true", help="keep the synthesised run")
    args = parser.parse_args()

    from eth_keys import KeyAPI

    from fl_ray.config import BaseModelSpec, LoraSpec
    from fl_ray.model import initial_adapter_state
    from fl_ray.receipts.synthetic import synthesise_run
    from fl_ray.receipts.verify import verify_run

    ram = Path("/dev/shm")
    parent = args.dir or tempfile.mkdtemp(
        prefix="fl-ray-bench-verify-", dir=ram if ram.is_dir() else None
    )
    out = Path(parent)
    try:
        config = demo_llama_config()
        shape_dir = out / "shape-base"
        shape_dir.mkdir(parents=True, exist_ok=True)
        (shape_dir / "config.json").write_text(json.dumps(config))
        state = initial_adapter_state(
            BaseModelSpec(path=str(shape_dir)), LoraSpec(r=8, target_modules=TARGETS), seed=0
        )
        started = time.perf_counter()
        run = synthesise_run(
            out, state, SILO_NAMES[: args.silos], args.rounds, base_config=config, run_name="bench"
        )
        synth_s = time.perf_counter() - started

        started = time.perf_counter()
        result = verify_run(run.run_dir, roster_path=run.roster_path)
        verify_s = time.perf_counter() - started
        started = time.perf_counter()
        no_recompute = verify_run(run.run_dir, roster_path=run.roster_path, recompute=False)
        no_recompute_s = time.perf_counter() - started
        # the whole command in a fresh process: interpreter start and imports included
        started = time.perf_counter()
        cli = subprocess.run(
            [sys.executable, "-m", "fl_ray.cli", "verify", str(run.run_dir),
             "--roster", str(run.roster_path)],
            stdout=subprocess.DEVNULL,
            check=False,
        )  # fmt: skip
        cli_s = time.perf_counter() - started
        files = list((run.run_dir / "rounds").rglob("*.safetensors"))
        report = {
            "rounds": args.rounds,
            "silos": args.silos,
            "adapter_tensors": len(state),
            "adapter_params": sum(t.numel() for t in state.values()),
            "safetensors_files": len(files),
            "run_bytes": sum(p.stat().st_size for p in files),
            "synthesise_seconds": round(synth_s, 2),
            "verify_seconds": round(verify_s, 3),
            "verify_no_recompute_seconds": round(no_recompute_s, 3),
            "cli_verify_seconds_cold_process": round(cli_s, 2),
            "cli_exit_code": cli.returncode,
            "ok": result.ok and no_recompute.ok,
            "failure": str(result.failure) if result.failure else None,
            "target_seconds": 10,
            "ecc_backend": type(KeyAPI().backend).__name__,
        }
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
