"""fl_ray: federated LoRA fine-tuning of open LLMs across data silos on Ray, with signed,
hash-chained round receipts an auditor can verify offline."""

__version__ = "0.1.0"

from fl_ray.config import Recipe, RecipeError, load_recipe  # noqa: E402


def run_federation(recipe: Recipe, resume: bool = False) -> dict:
    """Run a recipe end to end (imports Ray lazily); see :func:`fl_ray.runner.run_federation`."""
    from fl_ray.runner import run_federation as _run

    return _run(recipe, resume=resume)


__all__ = ["Recipe", "RecipeError", "__version__", "load_recipe", "run_federation"]
