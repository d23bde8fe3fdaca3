"""Property tests: whatever YAML text or recipe-shaped data the loader is given, it returns a
recipe or raises prefkit's own error type (never a bare Python exception), and so does the static
check that `prefkit validate` runs after it."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefkit.errors import PrefkitError, RecipeError
from prefkit.recipe.loader import LoadedRecipe, load_recipe
from prefkit.recipe.resolve import check
from tests.reliability.conftest import pinned_registry

REGISTRY = pinned_registry()
FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

# Text built from YAML's structural characters, tags, anchors and the words recipes use.
TOKENS = ["merge_method", "models", "model", "parameters", "preference", "density", "weight",
          "task", "ties", "linear", "zoo/a", "!!python/object:os.system", "!!binary", "!!set",
          "!!timestamp", "&a", "*a", "<<", "- ", ": ", ":", "[", "]", "{", "}", ",", "\n", "  ",
          "\t", "'", '"', "#", "---", "...", "?", "|", ">", "~", "null", "true", ".nan", "-.inf",
          "1e999", "0x1F", "2024-13-45", "1.5", "-3", "\x00", "\ufeff", "é", "=", "%YAML 1.1"]
yaml_text = st.lists(st.sampled_from(TOKENS) | st.text(max_size=4), max_size=40).map("".join)

scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["ties", "linear", "task_arithmetic", "zoo/a", "", ".", "../x",
                              "float32", "bf16", "padded", "per_task", "union", "*", "mlp"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(
                          ["filter", "value", "density", "weight", "lambda", "model", "task"]),
                          inner, max_size=4), max_leaves=12)
model_entry = st.fixed_dictionaries({"model": values}, optional={
    "task": values, "parameters": values, "labels": values, "extra": values})
recipe_dict = st.fixed_dictionaries({}, optional={
    "merge_method": st.sampled_from(["ties", "linear", "task_arithmetic", "tis"]) | values,
    "base_model": values, "models": st.lists(model_entry, max_size=3) | values,
    "parameters": st.dictionaries(st.sampled_from(["density", "weight", "lambda", "k", "trim",
                                                   "normalize", "consensus", "bogus"]),
                                  values, max_size=4) | values,
    "preference": st.lists(scalars, max_size=4) | values, "dtype": values, "out_dtype": values,
    "heads": values, "output": values, "evaluate": values, "tasks": values,
    "tokenizer_source": values, "slices": values})


def outcome(path, overrides=()) -> str:
    """'ok' or 'error'; anything else escapes and fails the test."""
    try:
        loaded = load_recipe(path, overrides)
        assert isinstance(loaded, LoadedRecipe)
        check(loaded, REGISTRY)
    except PrefkitError as exc:
        assert str(exc).strip()  # an error always says something
        return "error"
    return "ok"


@FUZZ
@given(text=yaml_text)
def test_random_yaml_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "recipe.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    outcome(path)


@FUZZ
@given(data=recipe_dict, overrides=st.lists(
    st.tuples(st.sampled_from(["parameters.density", "preference", "models.0.model", "models.9",
                               "merge_method", "x.y.z", "models.0.parameters.weight", "", "0"]),
              st.sampled_from(["0.3", "[1, 2]", "{a: 1}", "!!python/name:os.system", "[", "~",
                               "2024-13-45", "*a", ""])).map(lambda kv: f"{kv[0]}={kv[1]}"),
    max_size=2))
def test_random_recipe_shaped_data(tmp_path_factory, data, overrides):
    path = tmp_path_factory.mktemp("fuzz") / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8",
                    errors="surrogatepass")
    outcome(path, tuple(overrides))


def test_a_valid_recipe_passes_the_same_path(tmp_path):
    """The property above is not vacuous: the same code accepts a good recipe."""
    path = tmp_path / "recipe.yaml"
    path.write_text("merge_method: ties\nbase_model: b\nmodels: [{model: m1}, {model: m2}]\n"
                    "parameters: {density: 0.5}\npreference: [0.5, 0.5]\n")
    assert outcome(path) == "ok"


def test_nesting_deeper_than_the_python_stack(tmp_path):
    """PyYAML composes recursively: 1000 levels exhaust the stack before our depth limit."""
    path = tmp_path / "recipe.yaml"
    path.write_text("merge_method: ties\noutput: " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(RecipeError, match=rf"^{path}: invalid YAML: nested too deeply$"):
        load_recipe(path)
