"""AdaMerging: the λ gradient, preference following, clamping, leakage checks and the written
model, on the tiny tuned setup of conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from prefkit.api import SolveContext
from prefkit.cli import build_cli
from prefkit.eval.run import inline_tasks
from prefkit.moo import normalize_preference
from prefkit.progress import NullReporter
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from prefkit.train.adamerging import Coefficients, MergedClassifier, Objective, learn, unlabeled
from prefkit.train.data import BatchOrder, collate
from tests.conftest import builtin_plugins

from .conftest import recipe_text


@pytest.fixture(autouse=True)
def _token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def _context(tmp_path, registry, setup, name="r.yaml", **kw) -> SolveContext:
    path = tmp_path / name
    path.write_text(recipe_text(setup, **kw))
    loaded = load_recipe(path)
    plan = resolve(loaded, registry)
    tasks = inline_tasks(loaded.recipe.tasks)
    preference = normalize_preference(loaded.recipe.preference, len(plan.inputs)).tolist()
    return SolveContext(plan, tuple(tasks[m.task] for m in plan.inputs), tuple(preference),
                        plan.train, NullReporter())


def _cli(args):
    from prefkit.registry import load_registry

    cli = build_cli(lambda: load_registry(entry_points=False, plugins=builtin_plugins()))
    return CliRunner().invoke(cli, args)


def _lambdas(solution) -> list[dict[str, float]]:
    return [m["lambda"] for m in solution.state["models"]]


# ------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("heads", ["per_task", "padded"])
def test_lambda_gradient_equals_finite_differences(tmp_path, registry, tuned, heads):
    context = _context(tmp_path, registry, tuned, preference=(0.7, 0.3), heads=heads,
                       dtype="float64", train={"granularity": "layer", "num_samples": 16})
    model = MergedClassifier(context.plan, list(context.tasks), context.settings,
                             dtype=torch.float64, device="cpu")
    assert model.groups == ["embeddings", "layer.0", "layer.1", "other"] and model.inert == []
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(context.plan.tokenizer_source)
    batches = [collate(d, BatchOrder(len(d), 8, 0, d.task.name).indices(0), 0)[0]
               for d in unlabeled(context, tokenizer)]
    objective = Objective(context.settings, context.preference)
    lambdas = torch.rand(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lambdas = (0.2 + 0.6 * lambdas).requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(model.entropies(lambdas, batches)), lambdas)
    numeric = torch.zeros_like(grad)
    eps = 1e-6
    with torch.no_grad():
        for index in range(lambdas.numel()):
            step = torch.zeros_like(lambdas).view(-1)
            step[index] = eps
            up = objective(model.entropies(lambdas + step.view_as(lambdas), batches))
            down = objective(model.entropies(lambdas - step.view_as(lambdas), batches))
            numeric.view(-1)[index] = (up - down) / (2 * eps)
    assert grad.abs().min() > 1e-5  # every coefficient matters here: the check is not vacuous
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)


def test_lambdas_follow_the_preference_on_a_symmetric_setup(tmp_path, registry, tuned):
    train = {"steps": 40}
    first = _lambdas(learn(_context(tmp_path, registry, tuned, preference=(0.8, 0.2), train=train)))
    second = _lambdas(learn(_context(tmp_path, registry, tuned, preference=(0.2, 0.8), train=train)))
    assert first[0]["all"] > first[1]["all"] + 0.05
    assert second[1]["all"] > second[0]["all"] + 0.05
    # the same problem with the models listed the other way round: λ permute with the tasks
    swapped = learn(_context(tmp_path, registry, tuned, preference=(0.2, 0.8), train=train,
                             models=("kind", "sentiment")))
    assert [m["task"] for m in swapped.state["models"]] == ["kind", "sentiment"]
    assert _lambdas(swapped)[1]["all"] == pytest.approx(first[0]["all"], abs=1e-4)
    assert _lambdas(swapped)[0]["all"] == pytest.approx(first[1]["all"], abs=1e-4)


def test_clamp_projects_and_a_coefficient_at_a_bound_can_leave_it():
    """Adam's momentum carries λ past 1 on (λ − 0.9)²; the projection puts it on the bound, from
    where the gradient brings it back (clamping in the forward pass would zero that gradient)."""
    clamped = Coefficients(1, 1, init=0.3, lr=0.2, clamp=True)
    free = Coefficients(1, 1, init=0.3, lr=0.2, clamp=False)
    path, free_path = [], []
    for _ in range(60):
        for coefficients, trace in ((clamped, path), (free, free_path)):
            coefficients.step(((coefficients.value - 0.9) ** 2).sum())
            trace.append(float(coefficients.value.detach()))
    assert max(free_path) > 1.05  # without the clamp it does overshoot
    assert all(0.0 <= v <= 1.0 for v in path)
    touched = [i for i, v in enumerate(path) if v == 1.0]
    assert touched and max(path[touched[0]:]) == 1.0 and path[-1] < 1.0
    assert path[-1] == pytest.approx(0.9, abs=0.02)


def test_a_loss_no_coefficient_reaches_leaves_them_as_they_are():
    """Every group inert (the fine-tuned bodies equal the base: all task vectors zero): the
    objective does not depend on λ, so a step changes nothing (it used to raise in backward)."""
    coefficients = Coefficients(2, 3, init=0.3, lr=0.5, clamp=True)
    for _ in range(3):
        coefficients.step(torch.tensor(0.7))  # an entropy computed without λ
    assert torch.equal(coefficients.value.detach(), torch.full((2, 3), 0.3))


def test_objectives_are_the_preference_scalarizations(tmp_path, registry, tuned):
    h = torch.tensor([0.5, 0.2], dtype=torch.float64)
    context = _context(tmp_path, registry, tuned, preference=(0.25, 0.75),
                       train={"objective": "chebyshev", "ideal": "min"})
    objective = Objective(context.settings, context.preference)
    assert float(objective(h)) == pytest.approx(max(0.25 * 0, 0.75 * 0))  # z = H at first
    assert float(objective(torch.tensor([0.6, 0.1], dtype=torch.float64))) == pytest.approx(
        max(0.25 * (0.6 - 0.5), 0.75 * (0.1 - 0.1)))
    fixed = _context(tmp_path, registry, tuned, name="f.yaml", preference=(0.25, 0.75),
                     train={"objective": "chebyshev", "ideal": [0.1, 0.0], "mu": 0.01})
    value = Objective(fixed.settings, fixed.preference)(h)
    expected = 0.01 * torch.logsumexp(torch.tensor([0.25 * 0.4, 0.75 * 0.2]) / 0.01, 0)
    assert float(value) == pytest.approx(float(expected), rel=1e-6)
    linear = _context(tmp_path, registry, tuned, name="l.yaml", preference=(0.25, 0.75))
    assert float(Objective(linear.settings, linear.preference)(h)) == pytest.approx(0.275)


@pytest.mark.parametrize("granularity", ["task", "layer", "tensor"])
def test_granularity_decides_the_lambda_table(tmp_path, registry, tuned, granularity):
    context = _context(tmp_path, registry, tuned, train={"granularity": granularity, "steps": 1})
    state = learn(context).state
    body = [tp.name for tp in context.plan.tensors
            if not tp.copy and tp.name not in context.plan.head_tensors]
    expected = {"task": ["all"], "layer": ["embeddings", "layer.0", "layer.1", "other"],
                "tensor": body}[granularity]
    assert state["groups"] == expected
    assert state["fixed"] == sorted(context.plan.head_tensors)
    for model in state["models"]:
        assert list(model["lambda"]) == expected
        assert all(v != 0.3 for v in model["lambda"].values())  # one step moved every λ


# ------------------------------------------------------------------------------ the run


def _hand_merge(setup, state, name, vectors, density):
    """θ_0 + Σ_k λ_k τ̃_k computed here from the input files and the saved JSON alone."""
    base = load_file(str(Path(setup["base"]) / "model.safetensors"))[name].double()
    deltas = [load_file(str(Path(setup[m["task"]]) / "model.safetensors"))[name].double() - base
              for m in state["models"]]
    if vectors == "ties":
        kept = []
        for d in deltas:
            k = max(1, int(density * d.numel()))
            mask = torch.zeros(d.numel(), dtype=torch.bool)
            mask[d.abs().flatten().topk(k).indices] = True
            kept.append(d * mask.view_as(d))
        sign = torch.where(sum(kept) >= 0, 1.0, -1.0).double()
        deltas = [d * (d * sign > 0) for d in kept]
    layer = name.split(".layer.")[1].split(".")[0] if ".layer." in name else None
    group = {"task": "all", "tensor": name}.get(state["granularity"]) or (
        f"layer.{layer}" if layer else "embeddings" if "embeddings." in name else "other")
    return base + sum(m["lambda"][group] * d for m, d in zip(state["models"], deltas))


@pytest.mark.parametrize("train, heads", [
    ({"granularity": "layer"}, "per_task"),
    ({"granularity": "task", "vectors": "ties", "density": 0.3}, "per_task"),
    ({"granularity": "tensor"}, "padded"),
])
def test_written_model_is_base_plus_lambda_times_task_vectors(tmp_path, tuned, train, heads):
    (tmp_path / "r.yaml").write_text(recipe_text(tuned, preference=(0.6, 0.4), heads=heads,
                                                 train={**train, "steps": 5}))
    result = _cli(["run", "-q", "r.yaml"])
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    state = json.loads((tmp_path / "out" / "adamerging.json").read_text())
    assert line["solver"]["file"] == "out/adamerging.json"
    shown = state["models"][0]["lambda"]
    if train["granularity"] == "tensor":
        shown = sum(shown.values()) / len(shown)
        assert line["solver"]["lambda_mean"]["sentiment"] == pytest.approx(shown, abs=1e-6)
    else:
        shown = shown if train["granularity"] == "layer" else shown["all"]
        assert line["solver"]["lambda"]["sentiment"] == pytest.approx(shown, abs=1e-6)
    assert json.loads((tmp_path / "out" / "prefkit.json").read_text())["solver"]["steps"] == 5
    assert len(state["curve"]) == 2 and set(state["curve"][0]["entropy"]) == {"sentiment", "kind"}
    assert set(line["results"]) == {"sentiment", "kind"}
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    inputs = [load_file(str(Path(tuned[t]) / "model.safetensors")) for t in ("sentiment", "kind")]
    for name, tensor in merged.items():
        if name.startswith("classifier."):  # heads: the mean of the task heads
            expected = (inputs[0][name] + inputs[1][name]) / 2
        elif tensor.is_floating_point():
            expected = _hand_merge(tuned, state, name, train.get("vectors", "plain"),
                                   train.get("density"))
        else:
            continue
        torch.testing.assert_close(tensor.double(), expected.double(), rtol=1e-5, atol=1e-6)
    if heads == "per_task":  # each task's own head beside the body, for its evaluation
        own = load_file(str(tmp_path / "out" / "heads" / "kind.safetensors"))
        torch.testing.assert_close(own["classifier.weight"], inputs[1]["classifier.weight"])
    else:
        assert not (tmp_path / "out" / "heads").exists()


def test_adapting_on_the_evaluated_split_is_refused(tmp_path, tuned):
    (tmp_path / "r.yaml").write_text(recipe_text(
        tuned, train={"split": "validation"}, evaluate="{split: validation, device: cpu}"))
    result = _cli(["run", "r.yaml"])
    assert result.exit_code == 3
    errors = [x for x in result.stderr.splitlines() if x.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("Error: r.yaml:") and "train.split" in errors[0]
    assert "sentiment (validation), kind (validation)" in errors[0]
    assert not (tmp_path / "out").exists()
    # the same dataset split under another role name is the same data
    (tmp_path / "s.yaml").write_text(recipe_text(
        tuned, splits={"train": "train", "validation": "test", "test": "test"}))
    assert _cli(["validate", "s.yaml"]).exit_code == 3
    (tmp_path / "ok.yaml").write_text(recipe_text(
        tuned, train={"allow_eval_split": True}, evaluate="{split: validation, device: cpu}"))
    assert _cli(["validate", "ok.yaml"]).exit_code == 0


@pytest.mark.parametrize("train, message", [
    ({"density": 0.5}, "density applies to vectors: ties"),
    ({"init": 1.5}, "outside [0, 1]"),
    ({"mu": 0.1}, "ideal and mu apply to objective: chebyshev"),
    ({"split": "test"}, "train.split"),
    ({"corpus": {"dataset": "text", "data_files": "c.txt"}, "spleet": 1}, "train.spleet"),
])
def test_bad_settings_are_one_recipe_error(tmp_path, tuned, train, message):
    (tmp_path / "r.yaml").write_text(recipe_text(tuned, train=train))
    result = _cli(["validate", "r.yaml"])
    assert result.exit_code == 3 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unlabeled_corpus_can_replace_the_task_splits(tmp_path, registry, tuned):
    (tmp_path / "c.txt").write_text("".join(f"the {w} is very good\n\n" for w in
                                            ("cat", "car", "movie", "film", "bus", "dog")))
    context = _context(tmp_path, registry, tuned, train={
        "corpus": {"dataset": "text", "data_files": "c.txt"}, "steps": 2, "batch_size": 4})
    solution = learn(context)
    assert solution.state["curve"][-1]["step"] == 1
    pairs = recipe_text(tuned, train={"corpus": {"dataset": "text", "data_files": "c.txt"}})
    (tmp_path / "p.yaml").write_text(pairs.replace("text_fields: [text]", "text_fields: [text, text]"))
    result = _cli(["validate", "p.yaml"])
    assert result.exit_code == 3 and "take text pairs" in result.stderr


def test_an_existing_output_is_refused_before_learning(tmp_path, tuned):
    (tmp_path / "out").mkdir()
    (tmp_path / "r.yaml").write_text(recipe_text(tuned, train={"steps": 1000}))
    result = _cli(["run", "r.yaml"])
    assert result.exit_code != 0 and "already exists" in result.stderr
    assert "adamerging step" not in result.stderr
