"""Offline audit of a run directory against a roster: ``fl-ray verify`` (docs/receipts.md).

No Ray and no network: only the run directory's files, the roster of public addresses, and (when
it exists locally) the base model directory named in recipe.yaml. Checks, round by round from 0:

1. receipt.json is canonical, well-typed, for the roster's federation, for this round, linked to
   the previous receipt's hash (round 0: zero), named signer = roster coordinator, and its
   EIP-712 signature recovers (low-s only) to that address;
2. the recipe hash, base fingerprint, run id, strategy and its parameters match recipe.yaml (and
   the base model, when present); every contribution's silo signature recovers to the roster
   address of that silo over (update hash, examples, the round's starting global hash);
3. metrics.json, global.safetensors, server_state.safetensors and updates/<silo>.safetensors hash
   to what the receipt says; each round starts from the previous round's global adapter;
4. where all updates are stored, the merge is recomputed with the recorded strategy, weights and
   per-round seed and must reproduce the stored global adapter and server state *bitwise*
   (compared by canonical tensor hash; no tolerance). ``dp`` adds privacy noise: not recomputed.

The first failure stops verification and names the round, the field and the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from fl_ray.config import Recipe, RecipeError, parse_recipe
from fl_ray.receipts.chain import RECEIPT_FILE, ParsedReceipt, ReceiptFormatError, parse_receipt
from fl_ray.receipts.hashing import (
    EMPTY_STATE_HASH,
    ZERO_HASH,
    base_model_fingerprint,
    params_hash,
    safetensors_state_hash,
    sha256_hex,
    state_hash,
)
from fl_ray.receipts.keys import ROSTER_FILE, Roster, load_roster
from fl_ray.receipts.typed_data import SignatureError, recover_update_signer
from fl_ray.receipts.verdict import VerifyAbort, VerifyResult, abort

# Strategies whose merge draws privacy noise: the verifier says so instead of recomputing.
NOISY_STRATEGIES = {"dp": "noise (dp adds Gaussian privacy noise to the merge)"}
FINAL_ADAPTER = Path("final") / "adapter" / "adapter_model.safetensors"

AdapterState = dict[str, torch.Tensor]


class _StateFile:
    """A safetensors file read once: hashed from its bytes, tensors built only if needed."""

    def __init__(self, path: Path, round_num: int, field_name: str, rel: str) -> None:
        self.round, self.field, self.rel = round_num, field_name, rel
        try:
            self.blob = path.read_bytes()
        except FileNotFoundError:
            raise abort(round_num, field_name, rel, "file missing") from None
        try:
            self.hash = safetensors_state_hash(self.blob)
        except ValueError as err:
            raise abort(round_num, field_name, rel, f"unreadable safetensors ({err})") from None
        self._tensors: AdapterState | None = None

    def tensors(self) -> AdapterState:
        if self._tensors is None:
            try:
                self._tensors = load_safetensors(self.blob)
            except (SafetensorError, ValueError, RuntimeError) as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise abort(self.round, self.field, self.rel, f"unreadable ({msg})") from None
        return self._tensors


@dataclass
class _RoundState:
    """What round r hands to round r+1."""

    receipt_hash: str
    global_file: _StateFile
    server_hash: str
    server_file: _StateFile | None  # None: no server state saved (empty)

    @property
    def global_hash(self) -> str:
        return self.global_file.hash


def _max_abs_diff(a: AdapterState, b: AdapterState) -> str:
    if sorted(a) != sorted(b):
        return "different tensor names"
    worst = 0.0
    for key in a:
        if a[key].shape != b[key].shape or a[key].dtype != b[key].dtype:
            return f"tensor {key} differs in shape or dtype"
        worst = max(worst, float((a[key].double() - b[key].double()).abs().max()))
    return f"max |Δ| = {worst:.3g}"


class _Verifier:
    def __init__(
        self,
        root: Path,
        roster: Roster,
        recipe: Recipe,
        recipe_hash: str,
        recompute: bool,
        echo: Callable[[str], None],
    ) -> None:
        self.root, self.roster, self.recipe = root, roster, recipe
        self.recompute, self.echo = recompute, echo
        self.recipe_hash = recipe_hash
        self.base_fingerprint: str | None = None  # None: base model not found locally
        self.recipe_silos = {s.name: s for s in recipe.silos}

    # -- run-level checks -------------------------------------------------------------------
    def check_base(self, notes: list[str]) -> None:
        base = Path(self.recipe.base_model.path)
        if (base / "config.json").is_file():
            self.base_fingerprint = base_model_fingerprint(base)
            notes.append(f"base model {base}: fingerprint {self.base_fingerprint[:18]}… computed")
        else:
            notes.append(f"base model {base} not found here: base fingerprint not checked")

    # -- one round --------------------------------------------------------------------------
    def round(self, r: int, prev: _RoundState | None) -> tuple[_RoundState, str]:
        rel = f"rounds/{r:05d}"
        rdir = self.root / rel
        receipt_rel = f"{rel}/{RECEIPT_FILE}"
        receipt = self._authentic_receipt(r, rdir / RECEIPT_FILE, receipt_rel, prev)
        m = receipt.message
        self._check_recipe_fields(r, m, receipt, receipt_rel)

        metrics_rel = f"{rel}/metrics.json"
        try:
            metrics_blob = (rdir / "metrics.json").read_bytes()
        except FileNotFoundError:
            raise abort(r, "metrics_hash", metrics_rel, "file missing") from None
        if sha256_hex(metrics_blob) != m["metrics_hash"]:
            raise abort(r, "metrics_hash", metrics_rel, "file does not hash to the receipt's")

        global_rel = f"{rel}/global.safetensors"
        global_file = _StateFile(rdir / "global.safetensors", r, "global_after", global_rel)
        if global_file.hash != m["global_after"]:
            raise abort(r, "global_after", global_rel, "adapter does not hash to the receipt's")
        start_hash = prev.global_hash if prev else m["global_after"]
        if m["global_before"] != start_hash:
            raise abort(
                r, "global_before", receipt_rel, "is not the previous round's global adapter"
            )

        server_path = rdir / "server_state.safetensors"
        server_file: _StateFile | None = None
        if server_path.exists():
            server_rel = f"{rel}/server_state.safetensors"
            server_file = _StateFile(server_path, r, "server_state_after", server_rel)
            server_hash = server_file.hash
        else:
            server_rel, server_hash = f"{rel}/server_state.safetensors (absent)", EMPTY_STATE_HASH
        if server_hash != m["server_state_after"]:
            raise abort(r, "server_state_after", server_rel, "does not hash to the receipt's")

        updates = self._check_contributions(r, m, rdir, rel, receipt_rel)
        status = m["status"]
        if status in ("initial", "aborted"):
            prev_server = prev.server_hash if prev else EMPTY_STATE_HASH
            if m["global_after"] != m["global_before"] or server_hash != prev_server:
                raise abort(r, "global_after", receipt_rel, f"a round {status} must not change it")
            how = "unchanged"
        else:
            assert prev is not None  # round 0 is always "initial"
            how = self._check_merge(r, m, prev, updates, global_file)
        state = _RoundState(receipt.hash, global_file, server_hash, server_file)
        line = (
            f"round {r}  {status:<7}  contributions {len(m['contributions'])}  "
            f"dropped {len(m['dropped'])}  merge {how}  receipt {receipt.hash[:18]}…"
        )
        return state, line

    def _authentic_receipt(
        self, r: int, path: Path, rel: str, prev: _RoundState | None
    ) -> ParsedReceipt:
        """Parse, link and signature-check a receipt; every failure here blames receipt.json."""
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise abort(r, "receipt", rel, "file missing") from None
        try:
            receipt = parse_receipt(blob)
        except ReceiptFormatError as err:
            raise abort(r, err.field, rel, str(err).split(": ", 1)[-1]) from None
        m = receipt.message
        if m["federation"] != self.roster.federation:
            raise abort(
                r,
                "federation",
                rel,
                f"receipt is for federation {m['federation']!r}, "
                f"the roster's is {self.roster.federation!r}",
            )
        if m["round"] != r:
            raise abort(r, "round", rel, f"receipt is for round {m['round']}, found in round {r}")
        expected_prev = prev.receipt_hash if prev else ZERO_HASH
        if m["prev_receipt"] != expected_prev:
            raise abort(r, "prev_receipt", rel, f"does not link to {expected_prev[:18]}…")
        if params_hash(receipt.strategy_params) != m["strategy_params_hash"]:
            raise abort(r, "strategy_params", rel, "do not hash to strategy_params_hash")
        if receipt.signer != self.roster.coordinator:
            raise abort(r, "signer", rel, "is not the roster's coordinator address")
        try:
            recovered = receipt.recover_signer()
        except SignatureError as err:
            raise abort(r, "signature", rel, str(err)) from None
        if recovered != self.roster.coordinator:
            raise abort(
                r, "signature", rel, f"recovers to {recovered}, not the roster's coordinator"
            )
        return receipt

    def _check_recipe_fields(
        self, r: int, m: dict[str, Any], receipt: ParsedReceipt, receipt_rel: str
    ) -> None:
        if m["run_id"] != self.recipe.run_name:
            raise abort(r, "run_id", "recipe.yaml", f"run_name is not {m['run_id']!r}")
        if m["recipe_hash"] != self.recipe_hash:
            raise abort(r, "recipe_hash", "recipe.yaml", "does not hash to the receipt's")
        if self.base_fingerprint is not None and m["base_fingerprint"] != self.base_fingerprint:
            raise abort(
                r, "base_fingerprint", self.recipe.base_model.path, "differs from the receipt's"
            )
        expected_status = ("initial",) if r == 0 else ("ok", "aborted")
        if m["status"] not in expected_status:
            raise abort(r, "status", receipt_rel, f"{m['status']!r} in round {r}")
        strategy = self.recipe.strategy
        if m["strategy"] != strategy.name or receipt.strategy_params != strategy.params():
            raise abort(r, "strategy", "recipe.yaml", "strategy or parameters differ from receipt")

    def _check_contributions(
        self, r: int, m: dict[str, Any], rdir: Path, rel: str, receipt_rel: str
    ) -> dict[str, _StateFile] | None:
        """Check silo signatures and stored update files; returns the updates if all stored."""
        if m["status"] == "initial" and m["contributions"]:
            raise abort(r, "contributions", receipt_rel, "round 0 has no contributions")
        for item in m["dropped"]:
            if item["silo"] not in self.roster.silos:
                raise abort(r, f"dropped[{item['silo']}]", receipt_rel, "silo not in the roster")
        listed = {c["silo"] for c in m["contributions"]}
        stored = {p.stem: p for p in (rdir / "updates").glob("*.safetensors")}
        for extra in sorted(set(stored) - listed):
            raise abort(
                r, "contributions", f"{rel}/updates/{extra}.safetensors", "silo not in the receipt"
            )
        updates: dict[str, _StateFile] = {}
        for c in m["contributions"]:
            silo, where = c["silo"], f"contributions[{c['silo']}]"
            if silo not in self.roster.silos or silo not in self.recipe_silos:
                raise abort(r, f"{where}.silo", receipt_rel, "silo not in the roster and recipe")
            if c["address"] != self.roster.silos[silo]:
                raise abort(r, f"{where}.address", receipt_rel, "is not the roster's address")
            try:
                signer = recover_update_signer(
                    m["federation"],
                    m["run_id"],
                    r,
                    silo,
                    c["update_hash"],
                    c["num_examples"],
                    m["global_before"],
                    c["signature"],
                    checked=True,  # every field comes from the type-checked receipt
                )
            except SignatureError as err:
                raise abort(r, f"{where}.signature", receipt_rel, str(err)) from None
            if signer != c["address"]:
                raise abort(
                    r, f"{where}.signature", receipt_rel, f"recovers to {signer}, not the silo"
                )
            if silo in stored:
                update_rel = f"{rel}/updates/{silo}.safetensors"
                state = _StateFile(stored[silo], r, f"{where}.update_hash", update_rel)
                if state.hash != c["update_hash"]:
                    raise abort(
                        r, f"{where}.update_hash", update_rel, "does not hash to the receipt's"
                    )
                updates[silo] = state
            elif self.recipe.output.save_updates and m["status"] == "ok":
                raise abort(
                    r,
                    f"{where}.update_hash",
                    f"{rel}/updates/{silo}.safetensors",
                    "file missing (the recipe saves updates)",
                )
        return updates if set(updates) == listed else None

    def _check_merge(
        self,
        r: int,
        m: dict[str, Any],
        prev: _RoundState,
        updates: dict[str, _StateFile] | None,
        global_file: _StateFile,
    ) -> str:
        name = m["strategy"]
        if name in NOISY_STRATEGIES:
            return f"not recomputable: {NOISY_STRATEGIES[name]}"
        if updates is None:
            return "not recomputed: updates not stored"
        if not self.recompute:
            return "not recomputed (--no-recompute)"
        # imported only to recompute: they pull in the training stack (transformers, peft)
        from fl_ray.silo import derive_seed
        from fl_ray.strategies import aggregate

        names = [c["silo"] for c in m["contributions"]]  # silo-name order, as the coordinator
        weights = []
        for c in m["contributions"]:
            weight = self.recipe_silos[c["silo"]].weight
            weights.append(float(weight) if weight is not None else float(c["num_examples"]))
        try:
            merged = aggregate(
                name,
                self.recipe.strategy.params(),
                prev.global_file.tensors(),
                [updates[n].tensors() for n in names],
                weights,
                prev.server_file.tensors() if prev.server_file else {},
                seed=derive_seed(self.recipe.seed, "merge", r),
            )
        except (ValueError, KeyError, RuntimeError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise abort(
                r, "strategy", global_file.rel, f"merge could not be recomputed: {msg}"
            ) from None
        if state_hash(merged.state) != m["global_after"]:
            diff = _max_abs_diff(merged.state, global_file.tensors())
            raise abort(
                r, "merge", global_file.rel, f"recomputed {name} merge differs from stored ({diff})"
            )
        if state_hash(merged.server_state) != m["server_state_after"]:
            raise abort(
                r,
                "merge",
                global_file.rel.replace("global", "server_state"),
                f"recomputed {name} server state differs from stored",
            )
        return f"recomputed bitwise ({name})"


def _round_dirs(root: Path, notes: list[str]) -> list[int]:
    rounds_dir = root / "rounds"
    if not rounds_dir.is_dir():
        raise abort(None, "rounds", "rounds", "directory missing")
    found: list[int] = []
    for entry in sorted(rounds_dir.iterdir()):
        if entry.name.startswith(".tmp-"):
            notes.append(f"ignoring rounds/{entry.name} (debris of an interrupted write)")
        elif entry.name.isdigit() and len(entry.name) == 5 and entry.is_dir():
            found.append(int(entry.name))
        else:
            raise abort(None, "rounds", f"rounds/{entry.name}", "not a round directory")
    if not found:
        raise abort(0, "rounds", "rounds/00000", "no rounds in the run")
    for expected, got in enumerate(found):
        if got != expected:
            raise abort(expected, "rounds", f"rounds/{expected:05d}", "round directory missing")
    return found


@lru_cache(maxsize=8)
def _parse_recipe_text(text: str) -> tuple[Recipe, str]:
    """The recipe and its hash. Pure in the text, and Recipe is frozen: repeated audits reuse it.

    The hash is ``Recipe.fingerprint()``'s formula applied to the YAML tree *as written* (the
    run wrote ``recipe.to_dict()``, so the two agree), not to a re-validated Recipe: a later
    fl_ray that adds a recipe key with a default must not change the hash of an old run.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: same safe subset, faster
    tree = yaml.load(text, Loader=loader)
    recipe = parse_recipe(tree, check_paths=False)
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return recipe, "0x" + hashlib.sha256(canonical.encode()).hexdigest()


def _load_run_recipe(root: Path) -> tuple[Recipe, str]:
    try:
        return _parse_recipe_text((root / "recipe.yaml").read_text("utf-8"))
    except (RecipeError, yaml.YAMLError, UnicodeDecodeError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise abort(None, "recipe", "recipe.yaml", msg) from None


def verify_run(
    run_dir: str | Path,
    roster_path: str | Path | None = None,
    upto_round: int | None = None,
    recompute: bool = True,
    echo: Callable[[str], None] | None = None,
    check_base: bool = True,
) -> VerifyResult:
    """Verify a run directory's receipts and files, rounds 0..``upto_round`` (default: all).

    ``roster_path`` None uses ``RUN_DIR/roster.json`` (the run's own copy; an auditor should pass
    their own). ``echo`` receives the notes and one line per verified round. A missing run
    directory or roster raises FileNotFoundError (usage errors); everything else that does not
    check out is returned as ``failure``. ``check_base=False`` skips hashing the base model
    (minutes for a 70B model); the notes then say it was not checked.
    """
    say = echo or (lambda _line: None)
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory not found: {root}")
    if not (root / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{root} is not a run directory (no recipe.yaml)")
    own_copy = roster_path is None
    roster_file = root / ROSTER_FILE if own_copy else Path(roster_path)
    roster = load_roster(roster_file)
    notes = [
        f"roster: {roster_file}"
        + (" (the run directory's own copy; an auditor should pass --roster)" if own_copy else "")
    ]
    for note in notes:
        say(note)
    result = VerifyResult(False, [], None, {}, notes, roster_file)
    try:
        recipe, recipe_hash = _load_run_recipe(root)
        if recipe.federation.id != roster.federation:
            raise abort(
                None,
                "federation",
                str(roster_file),
                f"roster is for {roster.federation!r}, the recipe's federation is "
                f"{recipe.federation.id!r}",
            )
        rounds = _round_dirs(root, notes)
        if upto_round is not None:
            if upto_round not in rounds:
                raise ValueError(f"round {upto_round} is not in {root} (rounds 0..{rounds[-1]})")
            rounds = rounds[: upto_round + 1]
        verifier = _Verifier(root, roster, recipe, recipe_hash, recompute, say)
        if check_base:
            verifier.check_base(notes)
        else:
            notes.append("base model fingerprint not checked (--skip-base)")
        for note in notes[1:]:
            say(note)
        prev: _RoundState | None = None
        for r in rounds:
            prev, line = verifier.round(r, prev)
            result.rounds.append(r)
            result.receipt_hashes[r] = prev.receipt_hash
            say(line)
        final = root / FINAL_ADAPTER
        if upto_round is None and prev is not None and final.is_file():
            adapter = _StateFile(final, rounds[-1], "final adapter", str(FINAL_ADAPTER))
            if adapter.hash != prev.global_hash:
                raise abort(
                    rounds[-1],
                    "final adapter",
                    str(FINAL_ADAPTER),
                    "is not the last round's global adapter",
                )
            say(f"{FINAL_ADAPTER} is round {rounds[-1]}'s global adapter")
        result.ok = True
    except VerifyAbort as failed:
        result.failure = failed.failure
    return result
