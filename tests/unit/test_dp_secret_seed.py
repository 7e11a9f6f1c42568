"""DP noise in a signed run is drawn from a seed only the coordinator's key can produce: the
public recipe seed would let anyone regenerate the noise and subtract it."""

from __future__ import annotations

from fl_ray.config import parse_recipe
from fl_ray.coordinator import Coordinator
from fl_ray.receipts.keys import prepare_run_keys
from fl_ray.receipts.session import CoordinatorNotary, RunIdentity
from fl_ray.rundir import RunDir
from fl_ray.silo import derive_seed
from tests.conftest import recipe_tree


def _notary(tiny_base, root):
    keys = prepare_run_keys("fed", {"a": None}, root, demo_keys=True)
    return CoordinatorNotary(RunIdentity(keys, "run", "0" * 64), str(tiny_base))


def test_dp_seed_is_secret_stable_and_key_bound(tiny_base, demo_data, tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    notary, other = _notary(tiny_base, tmp_path / "one"), _notary(tiny_base, tmp_path / "two")
    tree = recipe_tree(tiny_base, demo_data, tmp_path, strategy={
        "name": "dp", "clip": 1.0, "noise_multiplier": 1.0})  # fmt: skip
    recipe = parse_recipe(tree)
    signed = Coordinator(recipe, RunDir(tmp_path / "x"), pool=None, notary=notary)
    unsigned = Coordinator(recipe, RunDir(tmp_path / "y"), pool=None)
    public = derive_seed(recipe.seed, "merge", 3)
    assert unsigned._merge_seed(3) == public  # documented: an unsigned run protects nothing
    assert signed._merge_seed(3) != public
    assert signed._merge_seed(3) == notary.secret_seed("merge", 3)  # stable: resume redraws it
    assert signed._merge_seed(3) != signed._merge_seed(4)
    assert other.secret_seed("merge", 3) != notary.secret_seed("merge", 3)  # bound to the key
    fedavg = parse_recipe(recipe_tree(tiny_base, demo_data, tmp_path))
    assert Coordinator(fedavg, RunDir(tmp_path / "z"), None, notary)._merge_seed(3) == public
