"""The run directory: the on-disk record of a federated run (layout documented in README).

    <output_dir>/<run_name>/
      recipe.yaml            the resolved recipe (after overrides)
      run.json               run id, recipe fingerprint, fl_ray version
      metrics.jsonl          one JSON line per completed round (rebuilt from rounds/ on resume)
      rounds/00000/          round 0: global.safetensors (initial adapter), metrics.json
      rounds/NNNNN/          global.safetensors, updates/<silo>.safetensors, metrics.json,
                             server_state.safetensors, and any extra files (e.g. receipt.json)
      final/adapter/         PEFT directory of the last global adapter
      final/merged/          base + adapter merged (merge_and_unload), with tokenizer

A round directory appears only complete: it is written under a temporary name, fsynced, then
renamed, so a crash at any moment leaves the run at its last complete round.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file, save_file

from fl_ray.config import Recipe
from fl_ray.crashpoints import crash_point
from fl_ray.model import AdapterState

ROUNDS = "rounds"


def round_name(round_num: int) -> str:
    return f"{round_num:05d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")


def save_state(path: Path, state: AdapterState) -> None:
    # safetensors wants contiguous tensors; sorted keys make the file bytes canonical.
    save_file({k: state[k].contiguous() for k in sorted(state)}, str(path))


def load_state(path: Path) -> AdapterState:
    return load_file(str(path))


class RunDir:
    """Reads and atomically extends one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def rounds_dir(self) -> Path:
        return self.root / ROUNDS

    def round_dir(self, round_num: int) -> Path:
        return self.rounds_dir / round_name(round_num)

    @classmethod
    def create(cls, recipe: Recipe, run_info: dict[str, Any]) -> RunDir:
        """Create a fresh run directory; refuses one that already holds a run."""
        run = cls(recipe.run_dir)
        if run.root.exists() and any(run.root.iterdir()):
            raise FileExistsError(
                f"run directory {run.root} already exists; use `fl-ray resume {run.root}` or "
                "set run_name=..."
            )
        run.rounds_dir.mkdir(parents=True, exist_ok=True)
        (run.root / "recipe.yaml").write_text(
            yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True), "utf-8"
        )
        write_json(run.root / "run.json", run_info)
        return run

    def recipe_dict(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "recipe.yaml").read_text("utf-8"))

    def run_info(self) -> dict[str, Any]:
        return json.loads((self.root / "run.json").read_text("utf-8"))

    def complete_rounds(self) -> list[int]:
        if not self.rounds_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.rounds_dir.iterdir() if p.name.isdigit())

    def last_complete_round(self) -> int | None:
        rounds = self.complete_rounds()
        return rounds[-1] if rounds else None

    def write_round(
        self,
        round_num: int,
        global_state: AdapterState,
        metrics: dict[str, Any],
        updates: dict[str, AdapterState] | None = None,
        server_state: AdapterState | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> Path:
        """Write one round all-or-nothing: temp dir, fsync every file, rename, fsync parent."""
        final = self.round_dir(round_num)
        if final.exists():
            raise FileExistsError(f"round {round_num} already written at {final}")
        tmp = self.rounds_dir / f".tmp-{round_name(round_num)}"
        if tmp.exists():
            shutil.rmtree(tmp)  # debris of a crash mid-write
        (tmp / "updates").mkdir(parents=True)
        save_state(tmp / "global.safetensors", global_state)
        for silo, state in sorted((updates or {}).items()):
            save_state(tmp / "updates" / f"{silo}.safetensors", state)
        if server_state:
            save_state(tmp / "server_state.safetensors", server_state)
        crash_point("write", round_num)  # tests: die with half a round on disk
        write_json(tmp / "metrics.json", metrics)
        for name, blob in sorted((extra_files or {}).items()):
            (tmp / name).write_bytes(blob)
        for path in sorted(tmp.rglob("*")):
            _fsync_path(path)
        _fsync_path(tmp)
        os.rename(tmp, final)
        _fsync_path(self.rounds_dir)
        self._append_metrics(metrics)
        return final

    def _append_metrics(self, metrics: dict[str, Any]) -> None:
        with open(self.root / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(metrics, sort_keys=True, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def rebuild_metrics_log(self) -> None:
        """Make metrics.jsonl agree with the complete rounds (after a crash between the two)."""
        lines = [
            json.dumps(self.round_metrics(r), sort_keys=True, ensure_ascii=False)
            for r in self.complete_rounds()
        ]
        path = self.root / "metrics.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in lines), "utf-8")
        os.replace(tmp, path)

    def round_metrics(self, round_num: int) -> dict[str, Any]:
        return json.loads((self.round_dir(round_num) / "metrics.json").read_text("utf-8"))

    def all_metrics(self) -> list[dict[str, Any]]:
        return [self.round_metrics(r) for r in self.complete_rounds()]

    def load_global(self, round_num: int) -> AdapterState:
        return load_state(self.round_dir(round_num) / "global.safetensors")

    def load_updates(self, round_num: int) -> dict[str, AdapterState]:
        folder = self.round_dir(round_num) / "updates"
        return {p.stem: load_state(p) for p in sorted(folder.glob("*.safetensors"))}

    def load_server_state(self, round_num: int) -> AdapterState:
        path = self.round_dir(round_num) / "server_state.safetensors"
        return load_state(path) if path.exists() else {}

    @property
    def final_adapter_dir(self) -> Path:
        return self.root / "final" / "adapter"

    @property
    def final_merged_dir(self) -> Path:
        return self.root / "final" / "merged"

    def write_json_file(self, name: str, obj: Any) -> Path:
        path = self.root / name
        tmp = path.with_name(path.name + ".tmp")
        write_json(tmp, obj)
        os.replace(tmp, path)
        return path
