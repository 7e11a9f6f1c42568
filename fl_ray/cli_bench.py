"""``fl-ray bench``: fedbench-tiny on fl_ray and its peers, side by side, as ratios from one run.

fedbench-tiny (DESIGN.md; peer scripts in ../shared/bench/): N silos × R rounds × K local steps,
batch 8 × 128 random tokens (seed 1000 + silo), LoRA r=8 α=16 on q,k,v,o of a 4-layer Llama
(vocab 2048, hidden 256), AdamW lr 1e-3 reset every round. Each system runs as its own process
tree, one after another, and is reported against the compute floor (the same steps in one
process, no federation) measured in the same invocation -- this machine is shared and noisy, so
only ratios from one run mean anything.

fl_ray runs with ``placement.mode: pack`` and starts from the *peers'* initial adapter (peft's
init under ``torch.manual_seed(0)``), so its per-round losses must equal theirs to 1e-4.

    fl-ray bench --silos 4 --rounds 5 --steps 8
    python -m fl_ray.cli_bench ...   # the fl_ray side alone (one JSON line; used by the above)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PEERS_DIR = REPO.parent / "shared" / "bench"
PEER_INIT_FILE = "peer_initial_adapter.safetensors"
# The peers' model (../shared/bench/*.py build_model), built under torch.manual_seed(0).
FEDBENCH_MODEL = {
    "vocab_size": 2048,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
}
FEDBENCH_LORA = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
# bare Ray holds one model process per silo: past this many silos it would not fit in memory
MAX_PER_PROCESS_SILOS = 16


# -- assets ------------------------------------------------------------------------------------
def build_fedbench_base(out: str | Path) -> Path:
    """Save the peers' exact base model to ``out`` and their initial adapter beside it.

    The peers build ``LlamaForCausalLM(cfg)`` right after ``torch.manual_seed(0)`` and let peft
    initialise LoRA from the same RNG stream; we replay that sequence, so the saved base and
    ``peer_initial_adapter.safetensors`` are bitwise theirs. No tokenizer: fedbench uses random
    token ids (``data.source: random_tokens``).
    """
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**FEDBENCH_MODEL))
    model.save_pretrained(str(out))  # draws nothing from the RNG: peft's init below sees theirs
    lora = LoraConfig(
        r=FEDBENCH_LORA["r"],
        lora_alpha=FEDBENCH_LORA["alpha"],
        lora_dropout=FEDBENCH_LORA["dropout"],
        target_modules=list(FEDBENCH_LORA["targets"]),
        task_type="CAUSAL_LM",
    )
    state = get_peft_model_state_dict(get_peft_model(model, lora))
    save_file(
        {k: v.detach().clone().contiguous() for k, v in sorted(state.items())},
        str(out / PEER_INIT_FILE),
    )
    return out


def ensure_base(assets: Path) -> Path:
    base = assets / "fedbench-base"
    if not (base / PEER_INIT_FILE).is_file():
        build_fedbench_base(base)
    return base


def fedbench_recipe_tree(
    base: Path,
    silos: int,
    rounds: int,
    steps: int,
    output_dir: Path,
    run_name: str = "fedbench",
    workers: int | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """The fedbench-tiny workload as an fl_ray recipe (see recipes/fedbench_tiny.yaml)."""
    return {
        "run_name": run_name,
        "output_dir": str(output_dir),
        "seed": 0,
        "rounds": rounds,
        "base_model": {"path": str(base)},
        "lora": {
            "r": FEDBENCH_LORA["r"],
            "alpha": FEDBENCH_LORA["alpha"],
            "dropout": FEDBENCH_LORA["dropout"],
            "target_modules": list(FEDBENCH_LORA["targets"]),
        },
        "data": {"source": "random_tokens", "random_seqs": 512, "random_seed_base": 1000},
        # pack placement ignores per-silo CPUs; a small figure keeps the embedded Ray at one
        # logical CPU per core
        "silos": [{"name": f"silo{i:03d}", "num_cpus": 0.01} for i in range(silos)],
        "train": {
            "local_steps": steps,
            "batch_size": 8,
            "seq_len": 128,
            "lr": 1e-3,
            "weight_decay": 0.01,  # torch.optim.AdamW's default, which the peers use
            "max_grad_norm": None,  # the peers do not clip
            "threads_per_silo": threads,
            "batch_order": "sequential",
        },
        "placement": {"mode": "pack", "pack_workers": workers},
        "output": {"save_updates": False, "save_merged": False},  # the peers persist nothing
        "federation": {"sign": False},  # the peers sign nothing
    }


# -- the fl_ray side (runs in its own process) ------------------------------------------------
class _TimedPool:
    """Wraps a silo pool to add up the seconds its train and evaluate calls take."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.names = pool, pool.names
        self.seconds = {"train": 0.0, "evaluate": 0.0}

    def _timed(self, what: str, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return getattr(self.pool, what)(*args)
        finally:
            self.seconds[what] += time.perf_counter() - started

    def train(self, *args: Any) -> Any:
        return self._timed("train", *args)

    def evaluate(self, *args: Any) -> Any:
        return self._timed("evaluate", *args)

    def train_alone(self, *args: Any) -> Any:
        return self.pool.train_alone(*args)

    def close(self) -> None:
        self.pool.close()


def run_fl_ray(tree: dict[str, Any], initial_adapter: Path) -> dict[str, Any]:
    """Run the recipe ``tree`` from ``initial_adapter`` with the packed pool; time the rounds."""
    from safetensors.torch import load_file

    from fl_ray import on_ray
    from fl_ray.config import parse_recipe
    from fl_ray.coordinator import Coordinator
    from fl_ray.on_ray.pack_pool import PackedRaySiloPool
    from fl_ray.rundir import RunDir

    recipe = parse_recipe(tree)
    run = RunDir.create(recipe, {"run_name": recipe.run_name, "purpose": "fedbench-tiny"})
    # Round 0 is the peers' initial adapter; the coordinator then resumes from it.
    run.write_round(0, load_file(str(initial_adapter)), {"round": 0, "status": "initial"})
    owned = on_ray.connect(recipe)
    try:
        started = time.perf_counter()
        pool = _TimedPool(PackedRaySiloPool(recipe))
        startup_s = time.perf_counter() - started
        try:
            coordinator = Coordinator(recipe, run, pool)
            coordinator.start()
            losses, rounds_started = [], time.perf_counter()
            for round_num in range(1, recipe.rounds + 1):
                metrics = coordinator.run_round(round_num)
                last = [s["train_loss_last"] for s in metrics["silos"].values()]
                losses.append(sum(last) / len(last))
            rounds_s = time.perf_counter() - rounds_started
            traffic = pool.pool.last_traffic
        finally:
            pool.close()
    finally:
        on_ray.disconnect(owned)
    return {
        "rounds_s": rounds_s,
        "train_s": pool.seconds["train"],
        "evaluate_s": pool.seconds["evaluate"],
        "pool_start_s": startup_s,
        "losses": losses,
        "bytes_down": metrics["bytes_down"],
        "bytes_up": metrics["bytes_up"],
        "adapter_bytes": traffic.adapter_bytes if traffic else None,
        "bytes_to_workers": traffic.bytes_to_workers if traffic else None,
        "object_store_puts": pool.pool.puts,
        "workers": len(pool.pool.members),
        "threads": pool.pool.threads,
    }


# -- running systems under a process-tree memory watch ----------------------------------------
def watch(cmds: list[list[str]], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmds`` side by side; the wall time, the peak summed RSS of all their process trees
    (as ../shared/bench/treemem.py measures one tree) and the last JSON line each printed."""
    import psutil

    started = time.time()
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO) for c in cmds
    ]
    roots = [psutil.Process(p.pid) for p in procs]
    outputs: list[list[str]] = [[] for _ in procs]
    readers = [
        threading.Thread(target=out.extend, args=(p.stdout,), daemon=True)
        for p, out in zip(procs, outputs, strict=True)
    ]
    for reader in readers:
        reader.start()
    peak = 0
    while any(p.poll() is None for p in procs):
        try:
            tree = [q for r in roots for q in (r, *r.children(recursive=True))]
            peak = max(peak, sum(q.memory_info().rss for q in tree if q.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.25)
    for reader in readers:
        reader.join()
    results = [
        next((json.loads(line) for line in reversed(lines) if line.startswith("{")), {})
        for lines in outputs
    ]
    result = dict(results[0])
    if len(results) > 1:  # side-by-side floor processes: the round ends with the slowest
        result["compute_s"] = max(r.get("compute_s", float("nan")) for r in results)
        result["parts"] = results
    result.update(
        measured_wall_s=time.time() - started,
        peak_tree_rss_mb=peak / 2**20,
        rc=max(abs(p.returncode) for p in procs),
    )
    return result


def split_floor(py: str, silos: int, rounds: int, steps: int, cores: int) -> list[list[str]]:
    """The floor as ``cores`` single-thread processes sharing the silos' steps (the other way
    to use every core; ../shared/bench/README.md quotes both)."""
    parts = min(cores, silos)
    share = [silos // parts + (i < silos % parts) for i in range(parts)]
    script = str(PEERS_DIR / "compute_floor.py")
    return [
        [
            py,
            script,
            "--silos",
            str(n),
            "--rounds",
            str(rounds),
            "--steps",
            str(steps),
            "--threads",
            "1",
        ]
        for n in share
    ]


def _peer_losses(result: dict[str, Any]) -> list[float] | None:
    if "losses" in result:
        return result["losses"]
    metrics = result.get("train_metrics")  # Flower: FedAvg's example-weighted train_loss
    if metrics:
        return [metrics[k]["train_loss"] for k in sorted(metrics, key=int)]
    return None


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requested systems one after another; return every figure."""
    assets = Path(args.assets).resolve()
    base = ensure_base(assets)
    shape = ["--silos", str(args.silos), "--rounds", str(args.rounds), "--steps", str(args.steps)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    py = sys.executable
    systems: dict[str, list[list[str]]] = {}
    if "floor" in args.systems:
        systems["floor"] = [[py, str(PEERS_DIR / "compute_floor.py"), *shape]]
        cores = os.cpu_count() or 1
        if cores > 1:
            systems[f"floor_{cores}x1"] = split_floor(
                py, args.silos, args.rounds, args.steps, cores
            )
    if "fl_ray" in args.systems:
        runs = assets / "runs"
        fl = [py, "-m", "fl_ray.cli_bench", *shape, "--base", str(base), "--out", str(runs)]
        if args.workers:
            fl += ["--workers", str(args.workers)]
        systems["fl_ray"] = [fl]
    if "ray" in args.systems and args.silos <= MAX_PER_PROCESS_SILOS:
        systems["bare_ray"] = [[py, str(PEERS_DIR / "minimal_ray_fedbench.py"), *shape]]
    if "flower" in args.systems and args.flower_python:
        systems["flower"] = [[args.flower_python, str(PEERS_DIR / "flower_fedbench.py"), *shape]]
        env["FB_OUT"] = str(assets / f"flower-{os.getpid()}.json")
    # Systems take turns (A B C A B C ...) so a burst of load from other users hits them
    # evenly; each keeps its fastest pass (the one least disturbed), all passes are recorded.
    passes: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    for turn in range(args.repeat):
        for name, cmds in systems.items():
            shown = " & ".join(" ".join(c) for c in cmds)
            print(f"[bench] pass {turn + 1}: {name}: {shown}", file=sys.stderr, flush=True)
            passes[name].append(watch(cmds, env))
    results = {name: min(runs, key=_seconds) for name, runs in passes.items()}
    for name, best in results.items():
        best["passes_s"] = [_seconds(r) for r in passes[name]]
    return {
        "silos": args.silos,
        "rounds": args.rounds,
        "steps": args.steps,
        "date": date,
        "nproc": os.cpu_count(),
        "mem_gb": round(_mem_total() / 2**30, 1),
        "results": results,
    }


def _seconds(result: dict[str, Any]) -> float:
    value = result.get("rounds_s", result.get("compute_s"))
    return float(value) if value and result.get("rc") == 0 else float("inf")


def _mem_total() -> int:
    import psutil

    return psutil.virtual_memory().total


def format_table(report: dict[str, Any]) -> str:
    """One table: rounds_s, wall_s, peak tree RSS, ratio to the floor, losses vs fl_ray's.

    ``× floor`` is against compute_floor.py as the peers run it (one process, every core);
    ``× best`` against the faster of that and the same steps split over one single-thread
    process per core.
    """
    results = report["results"]
    floors = [
        r["compute_s"] for n, r in results.items() if n.startswith("floor") and r.get("compute_s")
    ]
    floor = results.get("floor", {}).get("compute_s")
    best = min(floors) if floors else None
    ours = _peer_losses(results.get("fl_ray", {}))
    head = (
        f"fedbench-tiny  {report['silos']} silos × {report['rounds']} rounds × "
        f"{report['steps']} steps  ({report['date']}, nproc {report['nproc']}, "
        f"{report['mem_gb']} GB RAM)"
    )
    rows = [
        f"{'system':<10} {'rounds_s':>9} {'wall_s':>8} {'peak RSS MB':>12} "
        f"{'× floor':>8} {'× best':>7} {'max |Δloss|':>12}"
    ]
    for name, res in results.items():
        rounds_s = res.get("rounds_s", res.get("compute_s"))
        ratio = f"{rounds_s / floor:.2f}" if rounds_s and floor else "-"
        ratio_best = f"{rounds_s / best:.2f}" if rounds_s and best else "-"
        theirs = _peer_losses(res)
        if name == "fl_ray" or not theirs or not ours:
            delta = "-"
        else:
            delta = f"{max(abs(a - b) for a, b in zip(ours, theirs, strict=True)):.1e}"
        shown = f"{rounds_s:.1f}" if rounds_s else "failed"
        rows.append(
            f"{name:<10} {shown:>9} {res['measured_wall_s']:>8.1f} "
            f"{res['peak_tree_rss_mb']:>12.0f} {ratio:>8} {ratio_best:>7} {delta:>12}"
        )
    fl = results.get("fl_ray", {})
    if "train_s" in fl:
        steps = report["silos"] * report["rounds"] * report["steps"]
        rows.append(
            f"fl_ray: {fl['rounds_s'] / steps * 1000:.0f} ms per silo step; in rounds: train "
            f"{fl['train_s']:.1f} s, evaluate {fl['evaluate_s']:.1f} s; {fl['workers']} workers × "
            f"{fl['threads']} thread(s); per round {fl['bytes_down'] / 2**20:.1f} MiB down / "
            f"{fl['bytes_up'] / 2**20:.1f} MiB up (LoRA state × silos); "
            f"{fl['object_store_puts']} object-store puts in {report['rounds']} rounds of a "
            f"{fl['adapter_bytes'] / 2**20:.2f} MiB adapter, "
            f"{fl['bytes_to_workers'] / 2**20:.2f} MiB of it delivered to workers per round"
        )
    return "\n".join([head, *rows])


# -- command line -----------------------------------------------------------------------------
def _shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--silos", type=int, default=4, help="silos (4, 16, 64, ...)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="local steps per silo per round")
    p.add_argument("--workers", type=int, default=None, help="pack workers (default: one per core)")


def _cmd_bench(args: argparse.Namespace) -> int:
    if min(args.silos, args.rounds, args.steps, args.repeat) < 1:
        raise ValueError("--silos, --rounds, --steps and --repeat must be positive")
    unknown = set(args.systems) - {"floor", "fl_ray", "ray", "flower"}
    if unknown:
        raise ValueError(f"--systems: unknown {sorted(unknown)[0]!r} (floor, fl_ray, ray, flower)")
    if args.flower_python and not Path(args.flower_python).is_file():
        raise FileNotFoundError(f"--flower-python: no such file {args.flower_python}")
    report = run_bench(args)
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    failed = [n for n, r in report["results"].items() if r["rc"] != 0]
    if failed:
        print(f"fl-ray bench: {', '.join(failed)} exited with an error", file=sys.stderr)
        return 1
    return 0


def _cmd_bench_base(args: argparse.Namespace) -> int:
    out = build_fedbench_base(args.out)
    print(f"fedbench-tiny base model and the peers' initial adapter written to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fl-ray bench`` and ``fl-ray bench-base``."""
    p = subparsers.add_parser("bench", help="fedbench-tiny: fl_ray vs the compute floor and peers")
    _shape_args(p)
    p.add_argument(
        "--systems",
        type=lambda s: s.split(","),
        default=["floor", "fl_ray", "ray", "flower"],
        help="comma list of floor,fl_ray,ray,flower (peers run where installed)",
    )
    p.add_argument("--flower-python", help="python of a venv with flwr[simulation] (Flower peer)")
    p.add_argument("--assets", default="bench_assets", help="where the base model and runs go")
    p.add_argument("--repeat", type=int, default=1, help="passes per system (fastest kept)")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.set_defaults(func=_cmd_bench)
    p = subparsers.add_parser("bench-base", help="save fedbench-tiny's base model (no tokenizer)")
    p.add_argument("out", help="output directory")
    p.set_defaults(func=_cmd_bench_base)


def main(argv: list[str] | None = None) -> int:
    """The fl_ray side of the bench: one run, one JSON line on stdout."""
    started = time.time()
    p = argparse.ArgumentParser(prog="python -m fl_ray.cli_bench")
    _shape_args(p)
    p.add_argument("--base", required=True, help="directory written by `fl-ray bench-base`")
    p.add_argument("--out", required=True, help="directory to create the run directory in")
    p.add_argument("--threads", type=int, default=1, help="torch threads per pack worker")
    a = p.parse_args(argv)
    name = f"fedbench-{a.silos}x{a.rounds}x{a.steps}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    tree = fedbench_recipe_tree(
        Path(a.base), a.silos, a.rounds, a.steps, Path(a.out), name, a.workers, a.threads
    )
    result = run_fl_ray(tree, Path(a.base) / PEER_INIT_FILE)
    result["wall_s"] = time.time() - started
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
