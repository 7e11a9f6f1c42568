"""Recipe validation: each bad input gives one line naming the key or path, exit 2, nothing
written (no Ray involved)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fl_ray.config import RecipeError, apply_overrides, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def good(tmp_path) -> dict:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    for silo in ("a", "b"):
        d = tmp_path / "data" / silo
        d.mkdir(parents=True)
        (d / "train.jsonl").write_text("{}\n")
        (d / "eval.jsonl").write_text("{}\n")
    return {
        "run_name": "r",
        "output_dir": str(tmp_path / "runs"),
        "base_model": {"path": str(base)},
        "silos": [
            {"name": "a", "data_dir": str(tmp_path / "data" / "a")},
            {"name": "b", "data_dir": str(tmp_path / "data" / "b")},
        ],
        "federation": {"demo_keys": True},
    }


def test_good_recipe_parses_with_defaults(good):
    recipe = parse_recipe(good)
    assert recipe.rounds == 5 and recipe.lora.r == 8 and recipe.strategy.name == "fedavg"
    assert [s.name for s in recipe.silos] == ["a", "b"]


def test_demo_recipe_is_valid_schema():
    recipe = load_recipe(REPO / "recipes" / "demo.yaml", check_paths=False)
    assert len(recipe.silos) == 4 and recipe.baseline.local_only


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda t: t.update(roundz=3), "recipe: unknown key roundz"),
        (
            lambda t: t["lora"].update(rank=3) if "lora" in t else t.update(lora={"rank": 3}),
            "recipe: unknown key lora.rank",
        ),
        (lambda t: t.update(rounds="many"), "recipe: rounds:"),
        (lambda t: t.update(rounds=0), "recipe: rounds:"),
        (lambda t: t.pop("base_model"), "recipe: missing required key base_model"),
        (
            lambda t: t["silos"][1].update(data_dir="/nonexistent/x"),
            "recipe: silos.1.data_dir: missing file /nonexistent/x/train.jsonl",
        ),
        (
            lambda t: t["base_model"].update(path="/nonexistent/m"),
            "recipe: base_model.path: no model config at /nonexistent/m/config.json",
        ),
        (lambda t: t["silos"][1].update(name="a"), "duplicate silo name 'a'"),
        (lambda t: t.update(train={"lr": "fast"}), "recipe: train.lr:"),
        (lambda t: t.update(strategy={"name": "krum", "fff": 1}), "fff"),
        (lambda t: t["silos"][0].update(lora_r=2), "mixed LoRA ranks need strategy exact"),
    ],
)
def test_bad_recipes_name_the_key(good, mutate, message):
    mutate(good)
    with pytest.raises(RecipeError) as err:
        parse_recipe(good)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_overrides_nested_and_list_index():
    tree = {"train": {"lr": 0.1}, "silos": [{"name": "a"}]}
    apply_overrides(tree, ["train.lr=0.5", "rounds=3", "silos.0.name=z", "lora.target_modules=[q]"])
    assert tree == {
        "train": {"lr": 0.5},
        "silos": [{"name": "z"}],
        "rounds": 3,
        "lora": {"target_modules": ["q"]},
    }
    with pytest.raises(RecipeError, match="no list item silos.5"):
        apply_overrides(tree, ["silos.5.name=q"])
    with pytest.raises(RecipeError, match="expected key=value"):
        apply_overrides(tree, ["rounds"])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fl_ray.cli", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize(
    "override,message",
    [
        ("bogus=1", "unknown key bogus"),
        ("train.batch_size=big", "train.batch_size"),
        ("silos.0.data_dir=/nope", "/nope/train.jsonl"),
    ],
)
def test_cli_bad_input_exit_2_one_line_nothing_written(good, tmp_path, override, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(good))
    proc = _cli("run", str(path), override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_missing_recipe_and_bad_yaml(tmp_path):
    proc = _cli("run", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "recipe file not found" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1,\n")
    proc = _cli("run", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "is not valid YAML" in proc.stderr
    assert proc.stderr.count("\n") == 1
