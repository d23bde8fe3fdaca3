"""Notes for the user are one per merge, not one per tensor (a sweep merges many times)."""

from __future__ import annotations

from prefkit.api import TensorInfo
from prefkit.recipe.plan import TensorPlan
from prefkit.recipe.tensors import padding_notes


def _plan(name: str, shape: tuple[int, ...]) -> TensorPlan:
    return TensorPlan(name, shape, "float32", "float32", (None,), None,
                      TensorInfo(name, None, 0.0, ("a",)), None, ())


def test_one_padded_head_keeps_its_own_line():
    assert padding_notes([_plan("classifier.out_proj.weight", (4, 64))]) == [
        "classifier.out_proj.weight: head zero-padded to [4, 64]"]
    assert padding_notes([]) == []


def test_several_padded_heads_are_one_line():
    plans = [_plan(f"classifier.{n}", (6, 8)) for n in ("a", "b", "c", "d")]
    assert padding_notes(plans) == [
        "4 head tensors zero-padded to 6 classes (classifier.a, classifier.b, classifier.c, ...)"]
    mixed = [_plan("classifier.bias", (4,)), _plan("score.weight", (6, 8))]
    assert padding_notes(mixed) == [
        "2 head tensors zero-padded to 4 / 6 classes (classifier.bias, score.weight)"]


def test_a_merge_prints_the_summary(workdir, registry):
    from prefkit.recipe import load_recipe
    from prefkit.recipe.resolve import resolve
    from tests.helpers import write_recipe

    recipe = write_recipe(workdir, "merge_method: task_arithmetic\nbase_model: zoo/base\nmodels:\n"
                          "  - model: zoo/ag_news\n  - model: zoo/imdb\n"
                          "parameters: {weight: 1.0}\n")
    notes = resolve(load_recipe(recipe), registry, workdir / "out").notes
    assert [n for n in notes if "zero-padded" in n] == [
        "2 head tensors zero-padded to 4 classes (classifier.out_proj.bias, "
        "classifier.out_proj.weight)"]
