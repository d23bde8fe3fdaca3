"""Recipes: mergekit's YAML plus prefkit's keys. `load` reads and checks the envelope,
`resolve` (in `prefkit.recipe.plan`) turns a recipe into a frozen Plan."""

from prefkit.recipe.loader import LoadedRecipe, load_recipe
from prefkit.recipe.schema import ModelEntry, Recipe

__all__ = ["LoadedRecipe", "ModelEntry", "Recipe", "load_recipe"]
