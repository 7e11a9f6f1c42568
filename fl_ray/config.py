"""Recipe schema: YAML + ``key=value`` overrides, validated before anything starts.

Following torchtune, config stops at this edge: everything downstream receives the frozen
pydantic models below (flat, typed), never a raw dict. Every validation failure becomes one
:class:`RecipeError` whose message names the offending key or path in a single line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class RecipeError(ValueError):
    """A recipe that cannot be run; the message is one line naming the key or path."""


class _Frozen(BaseModel):
    # extra="forbid" turns a typo'd key into an error instead of a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelSpec(_Frozen):
    path: str
    # auto: bfloat16 on GPU (float16 where bf16 is unsupported), float32 on CPU
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    quantization: Literal["4bit", "8bit"] | None = None  # bitsandbytes, GPU silos only


class LoraSpec(_Frozen):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class DataSpec(_Frozen):
    # random_tokens: the fedbench workload (uniform random token ids, seed random_seed_base +
    # silo index, loss on every token) -- for benchmarks against peers, not for learning.
    source: Literal["files", "random_tokens"] = "files"
    random_seqs: int = Field(512, ge=1)
    random_seed_base: int = 1000
    format: Literal["jsonl", "parquet"] = "jsonl"
    prompt_field: str = "instruction"
    answer_field: str = "answer"
    train_file: str = "train.jsonl"
    eval_file: str = "eval.jsonl"


class AttackSpec(_Frozen):
    """Simulated adversary (for testing defences): how this silo corrupts its update."""

    kind: Literal["sign_flip", "scale", "gaussian", "nan"]
    factor: float = 100.0  # scale: update delta multiplied by this
    sigma: float = 1.0  # gaussian: std of noise added to the update


class FaultSpec(_Frozen):
    """Injected fault (resilience testing): in the listed rounds the silo's process really exits
    ``after_s`` seconds into training, or stalls ``sleep_s`` seconds before training."""

    kind: Literal["exit", "sleep"]
    rounds: tuple[int, ...] = ()
    after_s: float = Field(0.5, ge=0)
    sleep_s: float = Field(0.0, ge=0)


class SiloSpec(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    data_dir: str = ""
    num_cpus: float = Field(1.0, gt=0)
    gpus: int = Field(0, ge=0)
    weight: float | None = None  # None: weight by example count
    lora_r: int | None = Field(None, ge=1)  # per-silo rank (exact merging only)
    node_label: str | None = None  # value of the `fl-silo` node label this silo is pinned to
    keystore: str | None = None  # this silo's keystore; default <federation.keys_dir>/<name>.json
    attack: AttackSpec | None = None  # simulation only: make this silo adversarial
    fault: FaultSpec | None = None  # resilience testing only: make this silo die or stall


class TrainSpec(_Frozen):
    local_steps: int = Field(8, ge=1)
    batch_size: int = Field(8, ge=1)
    seq_len: int = Field(128, ge=8)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    threads_per_silo: int = Field(1, ge=1)
    # shuffle: seeded random batches; sequential: consecutive windows (the fedbench peers' order)
    batch_order: Literal["shuffle", "sequential"] = "shuffle"


class StrategySpec(_Frozen):
    model_config = ConfigDict(extra="allow", frozen=True)  # strategy parameters vary by name
    name: str = "fedavg"

    def params(self) -> dict[str, Any]:
        """Strategy parameters (everything but ``name``), sorted for stable hashing."""
        return dict(sorted((self.model_extra or {}).items()))


class RoundSpec(_Frozen):
    timeout_s: float | None = Field(None, gt=0)
    min_silos: int = Field(1, ge=1)
    fraction: float = Field(1.0, gt=0, le=1.0)


class FederationSpec(_Frozen):
    """Identity and keys: who may sign what (EIP-712 domain, roster of public addresses)."""

    id: str = Field("fl-ray-demo", pattern=r"^[A-Za-z0-9_.:-]+$")
    roster: str | None = None  # roster.json (public addresses); None with demo_keys
    keys_dir: str | None = None  # keystores <silo>.json and coordinator.json
    password_env: str = "FL_RAY_KEY_PASSWORD"  # env var holding the keystore password
    password_file: str | None = None  # or a file holding it (never the command line)
    demo_keys: bool = False  # create throwaway demo keys inside the run directory
    sign: bool = True  # sign updates and round receipts


class PlacementSpec(_Frozen):
    mode: Literal["per_node", "pack"] = "per_node"  # pack: few workers host many virtual silos
    pack_workers: int | None = Field(None, ge=1)  # pack: worker actors (default: one per core)
    on_unplaceable: Literal["fail", "drop"] = "fail"  # a silo whose labelled node is absent
    placement_timeout_s: float = Field(120.0, gt=0)
    max_restarts: int = Field(-1, ge=-1)  # silo actor restarts on its own node (-1: unlimited)


class ServeSpec(_Frozen):
    port: int = Field(8000, ge=1, le=65535)
    replicas: int = Field(1, ge=1)
    min_replicas: int | None = Field(None, ge=0)  # set both min/max for autoscaling
    max_replicas: int | None = Field(None, ge=1)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class LoggingSpec(_Frozen):
    tensorboard: bool = False  # write round metrics as TensorBoard scalars (if installed)
    mlflow: bool = False  # log round metrics to MLflow (if installed)


class BaselineSpec(_Frozen):
    local_only: bool = False  # also train each silo alone, for the "federation helps" check


class OutputSpec(_Frozen):
    save_updates: bool = True
    save_merged: bool = True


class Recipe(_Frozen):
    """A whole federated run; see recipes/demo.yaml for every key explained."""

    run_name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = "runs"
    seed: int = 0
    rounds: int = Field(5, ge=1)
    base_model: BaseModelSpec
    lora: LoraSpec = LoraSpec()
    data: DataSpec = DataSpec()
    silos: tuple[SiloSpec, ...] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    strategy: StrategySpec = StrategySpec()
    round: RoundSpec = RoundSpec()
    baseline: BaselineSpec = BaselineSpec()
    output: OutputSpec = OutputSpec()
    federation: FederationSpec = FederationSpec()
    placement: PlacementSpec = PlacementSpec()
    serve: ServeSpec = ServeSpec()
    logging: LoggingSpec = LoggingSpec()

    @field_validator("silos")
    @classmethod
    def _unique_silo_names(cls, silos: tuple[SiloSpec, ...]) -> tuple[SiloSpec, ...]:
        names = [s.name for s in silos]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate silo name {dupes[0]!r}")
        return silos

    @model_validator(mode="after")
    def _strategy_fits(self) -> Recipe:
        # imported here: fl_ray.strategies imports fl_ray.model, which imports this module
        from fl_ray.strategies import MIXED_RANK_STRATEGIES, check_params

        check_params(self.strategy.name, self.strategy.params())

        ranks = sorted({s.lora_r or self.lora.r for s in self.silos})
        if len(ranks) > 1 and self.strategy.name not in MIXED_RANK_STRATEGIES:
            raise ValueError(
                f"silos have LoRA ranks {ranks}: mixed LoRA ranks need strategy exact "
                f"(strategy is {self.strategy.name})"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the resolved recipe (what receipts and resume check)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: empty key")
    # YAML parsing gives `rounds=3` an int and `lora.target_modules=[q_proj]` a list.
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (list items by index: ``silos.0.data_dir=x``) to a recipe dict."""
    for text in overrides:
        path, value = _parse_override(text)
        node: Any = tree
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"override {text!r}: no list item {where}")
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise RecipeError(f"override {text!r}: {where} is not a section")
            else:
                raise RecipeError(f"override {text!r}: {where} is not a section")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError(f"override {text!r}: no list item {'.'.join(path)}")
            node[int(last)] = value
        else:
            node[last] = value
    return tree


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(recipe)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"recipe: unknown key {key}"
    if kind == "missing":
        return f"recipe: missing required key {key}"
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"recipe: {key}: {first['msg']}{shown}"


def check_files(recipe: Recipe) -> None:
    """Every path the run needs must exist before anything starts."""
    base = Path(recipe.base_model.path)
    if not (base / "config.json").is_file():
        raise RecipeError(f"recipe: base_model.path: no model config at {base / 'config.json'}")
    if recipe.data.source != "files":
        return
    for i, silo in enumerate(recipe.silos):
        if silo.node_label:  # its data lives on its own node; the silo checks it there
            continue
        for split in (recipe.data.train_file, recipe.data.eval_file):
            path = Path(silo.data_dir) / split
            if not path.is_file():
                raise RecipeError(f"recipe: silos.{i}.data_dir: missing file {path}")


def parse_recipe(tree: Any, check_paths: bool = True) -> Recipe:
    """Validate a recipe dict (already overridden) into a frozen :class:`Recipe`."""
    if not isinstance(tree, dict):
        raise RecipeError("recipe: top level must be a mapping of keys")
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as err:
        raise RecipeError(_first_error(err)) from None
    if check_paths:
        check_files(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] = (), check_paths: bool = True) -> Recipe:
    """Read a YAML recipe, apply CLI overrides, validate types and referenced files."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"recipe {path}:{where} is not valid YAML") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise RecipeError(f"recipe {path}: top level must be a mapping of keys")
    return parse_recipe(apply_overrides(tree, list(overrides)), check_paths=check_paths)
