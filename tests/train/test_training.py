"""The shared multi-task training loop and the chebyshev / epo / linear_scalarization trainers,
on a tiny BERT and two word-level tasks (tests/train/conftest.py)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.errors import PrefkitError
from prefkit.eval.run import inline_tasks
from prefkit.moo import non_uniformity
from prefkit.progress import NullReporter
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from prefkit.train import train_plan
from prefkit.train.data import BatchOrder
from prefkit.train.loop import learning_rate
from tests.conftest import builtin_plugins

from .conftest import recipe_text


@pytest.fixture(autouse=True)
def _token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def _plan(tmp_path, registry, setup, method, name="r.yaml", **kw):
    path = tmp_path / name
    path.write_text(recipe_text(setup, method, **kw))
    loaded = load_recipe(path)
    return resolve(loaded, registry), loaded


def _train(plan, loaded, registry, **kw):
    return train_plan(plan, registry, reporter=NullReporter(),
                      extra_tasks=inline_tasks(loaded.recipe.tasks), **kw)


def _cli(args):
    from prefkit.registry import load_registry

    cli = build_cli(lambda: load_registry(entry_points=False, plugins=builtin_plugins()))
    return CliRunner().invoke(cli, args)


# ---------------------------------------------------------------------------------- pieces


def test_learning_rate_warms_up_then_decays():
    lrs = [learning_rate(s, 10, 1.0, 0.2, "linear") for s in range(10)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    cos = [learning_rate(s, 10, 1.0, 0.0, "cosine") for s in (0, 5)]
    assert cos == pytest.approx([1.0, 0.5])
    assert learning_rate(7, 10, 0.3, 0.1, "constant") == 0.3


def test_batch_order_is_seeded_and_covers_each_pass_once():
    order = BatchOrder(10, 4, seed=3, task="t")
    first_pass = order.indices(0) + order.indices(1) + order.indices(2)[:2]
    assert sorted(first_pass) == list(range(10))
    assert BatchOrder(10, 4, seed=3, task="t").indices(5) == order.indices(5)
    assert BatchOrder(10, 4, seed=4, task="t").indices(0) != order.indices(0)


# ------------------------------------------------------------------------- training runs


def test_chebyshev_recipe_trains_writes_caches_and_evaluates(tmp_path, tiny_setup):
    (tmp_path / "c.yaml").write_text(recipe_text(tiny_setup, "chebyshev", preference=(0.8, 0.2)))
    first = _cli(["run", "-q", "c.yaml"])
    assert first.exit_code == 0, first.stderr
    line = json.loads(first.stdout)
    training = line["training"]
    assert training["cached"] is False and training["steps"] == 60
    model_file = tmp_path / training["model"]
    assert model_file.parent == tmp_path / "checkpoints" / "training"
    assert model_file.name.startswith("chebyshev_") and model_file.is_file()
    assert not list(model_file.parent.glob("*.resume.safetensors"))
    log = [json.loads(x) for x in (tmp_path / training["log"]).read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 61))
    for row in log:  # hard Chebyshev: all weight on the task with the largest p_i·L_i
        weighted = [p * loss for p, loss in zip((0.8, 0.2), row["losses"])]
        k = weighted.index(max(weighted))
        assert row["alpha"] == [(0.8, 0.2)[i] if i == k else 0.0 for i in range(2)]
    out = tmp_path / "out"
    provenance = json.loads((out / "prefkit.json").read_text())
    assert provenance["method"] == "chebyshev" and provenance["heads"] == "per_task"
    assert provenance["training"]["model"] == training["model"]
    assert sorted(p.name for p in (out / "heads").iterdir()) == ["sentiment.safetensors",
                                                                  "topic.safetensors"]
    assert set(line["results"]) == {"sentiment", "topic"}
    assert line["results"]["sentiment"]["accuracy"] > 0.9  # the word decides the label

    # the written model is the trained one: body tensors equal the cached file's
    from safetensors.torch import load_file
    trained = load_file(str(model_file))
    written = load_file(str(out / "model.safetensors"))
    name = "bert.encoder.layer.1.output.dense.weight"
    assert torch.equal(written[name], trained[name])
    head = load_file(str(out / "heads" / "topic.safetensors"))
    assert torch.equal(head["classifier.weight"], trained["heads.topic.classifier.weight"])

    again = _cli(["run", "-q", "c.yaml"])  # a cache hit: nothing trained, nothing rewritten
    assert again.exit_code == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["training"]["cached"] is True
    assert second["results"] == line["results"]

    only = _cli(["run", "-q", "c.yaml", "--set", "train.evaluate_only=true"])
    assert only.exit_code == 0 and json.loads(only.stdout)["training"]["cached"] is True
    missing = _cli(["run", "-q", "c.yaml", "--set", "train.evaluate_only=true",
                    "--set", "train.seed=1"])
    assert missing.exit_code != 0
    assert "train.evaluate_only: no trained model" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_cache_key_covers_what_changes_the_weights(tmp_path, registry, tiny_setup):
    def stem(**kw):
        plan, loaded = _plan(tmp_path, registry, tiny_setup, "epo", **kw)
        from prefkit.train.run import cache_key, resolve_device
        from prefkit.train.state import cache_hash

        tasks = [inline_tasks(loaded.recipe.tasks)[m.task] for m in plan.inputs]
        from prefkit.train.run import _orders
        return cache_hash(cache_key(plan, tasks, _orders(plan, tasks), [0.5, 0.5],
                                    *resolve_device(plan.train)))

    reference = stem()
    assert stem(train="log_every: 3, eval_every: 5, eval_samples: 9") == reference
    assert stem(train="cache_dir: elsewhere") == reference
    assert stem(train="lr: 0.001") != reference
    assert stem(train="eps: 0.01") != reference
    assert stem(heads="padded") != reference


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, registry, tiny_setup):
    plan, loaded = _plan(tmp_path, registry, tiny_setup, "epo", preference=(0.7, 0.3),
                         train="cache_dir: straight")
    straight = _train(plan, loaded, registry)
    assert straight.summary["resumed_from"] is None

    plan, loaded = _plan(tmp_path, registry, tiny_setup, "epo", preference=(0.7, 0.3),
                         train="cache_dir: broken")

    def crash(step, row):
        if step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(plan, loaded, registry, on_step=crash)
    resume = list((tmp_path / "broken").glob("*.resume.safetensors"))
    finished = [f for f in (tmp_path / "broken").glob("*.safetensors") if f not in resume]
    assert len(resume) == 1 and finished == []
    resumed = _train(plan, loaded, registry)
    assert resumed.summary["resumed_from"] == 20  # the last checkpoint (every 10 steps)
    assert not resume[0].exists()
    assert resumed.weights.keys() == straight.weights.keys()
    for name in straight.weights:
        assert torch.equal(resumed.weights[name], straight.weights[name]), name
    for task in straight.task_heads:
        for name in straight.task_heads[task]:
            assert torch.equal(resumed.task_heads[task][name], straight.task_heads[task][name])
    log = [json.loads(x) for x in resumed.files.log.read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 61))


def _final_losses(tmp_path, registry, setup, method, preference, cache):
    plan, loaded = _plan(tmp_path, registry, setup, method, preference=preference,
                         train=f"cache_dir: {cache}, eval_every: 60, eval_samples: 60")
    trained = _train(plan, loaded, registry)
    log = [json.loads(x) for x in trained.files.log.read_text().splitlines()]
    final = log[-1]["eval"]
    return torch.tensor([final["sentiment"]["loss"], final["topic"]["loss"]], dtype=torch.float64)


def test_preference_steers_the_losses_towards_its_ray(tmp_path, registry, tiny_setup):
    """p = (0.8, 0.2) asks for p_i·L_i equal (sentiment's loss a quarter of topic's): EPO and
    Chebyshev end nearer that ray than training with uniform weights does."""
    p = torch.tensor([0.8, 0.2], dtype=torch.float64)
    uniform = _final_losses(tmp_path, registry, tiny_setup, "linear_scalarization", (0.5, 0.5), "u")
    epo = _final_losses(tmp_path, registry, tiny_setup, "epo", (0.8, 0.2), "e")
    cheb = _final_losses(tmp_path, registry, tiny_setup, "chebyshev", (0.8, 0.2), "c")
    spread = {name: float(non_uniformity(losses, p))
              for name, losses in (("uniform", uniform), ("epo", epo), ("chebyshev", cheb))}
    assert spread["epo"] < 0.5 * spread["uniform"], spread
    assert spread["chebyshev"] < 0.75 * spread["uniform"], spread


def test_padded_heads_train_one_shared_head(tmp_path, registry, tiny_setup):
    plan, loaded = _plan(tmp_path, registry, tiny_setup, "linear_scalarization", heads="padded",
                         train="steps: 5")
    trained = _train(plan, loaded, registry)
    assert trained.task_heads == {}
    assert trained.weights["classifier.weight"].shape == (3, 16)
    assert trained.labels == {"sentiment": ["negative", "positive"],
                              "topic": ["vehicle", "animal", "color"]}


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("edit", "message"), [
    (('"steps": 60', '"steps": 0'), "train.steps: 0 is less than 1; must be a whole number of at least 1"),
    (('"seed": 0', '"seed": 0, "epochs": 2'), "train.epochs: steps and epochs both given"),
    (('"seed": 0', '"seed": 0, "bogus": 1'), "train.bogus: unknown key (allowed here: batch_size,"),
    (("merge_method: epo", "merge_method: ties"), "train: method 'ties' does not train"),
    (("task: topic}}", "}}"), "epo trains on every model's task"),
])
def test_recipe_errors_name_the_train_field(tmp_path, tiny_setup, edit, message):
    text = recipe_text(tiny_setup, "epo")
    old, new = (e.replace("{{", "{").replace("}}", "}") for e in edit)
    assert old in text
    (tmp_path / "bad.yaml").write_text(text.replace(old, new, 1))
    result = _cli(["validate", "bad.yaml"])
    assert result.exit_code != 0
    first = result.stderr.splitlines()[0]
    assert first.startswith("Error: bad.yaml:") and message in first, result.stderr


def test_non_finite_loss_stops_with_one_line(tmp_path, registry, tiny_setup):
    plan, loaded = _plan(tmp_path, registry, tiny_setup, "linear_scalarization",
                         train="steps: 3, lr: 1.0e+30, max_grad_norm: null, optimizer: sgd")
    with pytest.raises(PrefkitError, match="is not finite"):
        _train(plan, loaded, registry)


# ------------------------------------------------------------------- the step's arithmetic


def test_gradient_step_uses_gram_of_task_gradients_and_weighted_update(tmp_path, registry,
                                                                        tiny_setup):
    """For a gradient method the loop hands over G = J·Jᵀ of the per-task gradients and sets each
    parameter's gradient to Σ α_i g_i; checked against autograd on each task separately."""
    from prefkit.api import TrainerMethod
    from prefkit.train.data import prepare
    from prefkit.train.loop import _losses, _step
    from prefkit.train.model import MultiTaskModel
    from prefkit.train.run import _orders

    class Spy(TrainerMethod):
        name = "spy"
        uses_gradients = True
        seen = {}

        def task_weights(self, losses, *, preference, settings, state, gram=None):
            self.seen.update(losses=losses, gram=gram)
            return torch.tensor([0.3, 0.7], dtype=torch.float64)

    plan, loaded = _plan(tmp_path, registry, tiny_setup, "epo")
    tasks = [inline_tasks(loaded.recipe.tasks)[m.task] for m in plan.inputs]
    orders = _orders(plan, tasks)
    import transformers
    tokenizer = transformers.AutoTokenizer.from_pretrained(plan.tokenizer_source)
    data = [prepare(t, tokenizer, o, "train", 16) for t, o in zip(tasks, orders)]
    model = MultiTaskModel(plan, tasks, per_task=True, seed=0, train_layers=1)
    model.train()
    params = model.parameters()
    orders_ = [BatchOrder(len(d), 8, 0, d.task.name) for d in data]
    spy = Spy()
    pref = torch.tensor([0.5, 0.5], dtype=torch.float64)
    row = _step(model, data, orders_, spy, plan.train, pref, {}, 3, "cpu", False, 0, params)
    grads = []
    for i in range(2):
        loss = _losses(model, data, orders_, 3, "cpu", False, 0, i)
        grads.append(torch.cat([
            (g if g is not None else torch.zeros_like(p)).flatten()
            for g, (_, p) in zip(torch.autograd.grad(loss, [p for _, p in params], allow_unused=True),
                                 params)]))
    J = torch.stack(grads).double()
    assert torch.allclose(spy.seen["gram"], J @ J.T, rtol=1e-5, atol=1e-10)
    assert row["alpha"] == [0.3, 0.7]
    update = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                        for _, p in params]).double()
    assert torch.allclose(update, 0.3 * J[0] + 0.7 * J[1], rtol=1e-5, atol=1e-9)
    # only the top layer (train_layers: 1), the pooler and the two heads are trained
    names = [n for n, _ in params]
    assert not any(".layer.0." in n or "embeddings" in n for n in names)
    assert "heads.topic.classifier.weight" in names and "bert.pooler.dense.weight" in names


def test_chebyshev_weights_are_the_gradient_of_its_scalarization():
    from prefkit.plugins.scalarization import Chebyshev, ChebyshevSettings

    losses = torch.tensor([0.9, 0.4, 1.2], dtype=torch.float64)
    p = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    hard = Chebyshev().task_weights(losses, preference=p, settings=ChebyshevSettings(),
                                    state={})
    assert hard.tolist() == [0.0, 0.0, 0.3]  # p·L = (0.18, 0.2, 0.36): task 3 is the max
    smooth = Chebyshev().task_weights(losses, preference=p, settings=ChebyshevSettings(mu=0.1),
                                      state={})
    expected = p * torch.softmax(p * losses / 0.1, 0)
    assert torch.allclose(smooth, expected)
    state = {}
    settings = ChebyshevSettings(ideal="min")
    Chebyshev().task_weights(losses, preference=p, settings=settings, state=state)
    alpha = Chebyshev().task_weights(torch.tensor([1.0, 0.3, 1.22], dtype=torch.float64),
                                     preference=p, settings=settings, state=state)
    assert state["ideal"] == [0.9, 0.3, 1.2]  # the running minimum
    # p·(L − z) = (0.02, 0, 0.006): task 1 is the max (with z = 0 it would be task 3)
    assert alpha.tolist() == [0.2, 0.0, 0.0]


def test_bf16_autocast_trains_and_is_part_of_the_cache_key(tmp_path, registry, tiny_setup):
    plan, loaded = _plan(tmp_path, registry, tiny_setup, "linear_scalarization",
                         train="steps: 4, precision: bf16")
    bf16 = _train(plan, loaded, registry)
    plan, loaded = _plan(tmp_path, registry, tiny_setup, "linear_scalarization",
                         train="steps: 4, precision: fp32")
    fp32 = _train(plan, loaded, registry)
    assert bf16.summary["bf16"] is True and fp32.summary["bf16"] is False
    assert bf16.files.model != fp32.files.model
    name = "bert.encoder.layer.1.output.dense.weight"
    assert bf16.weights[name].dtype == torch.float32
    assert not torch.equal(bf16.weights[name], fp32.weights[name])
    assert torch.allclose(bf16.weights[name], fp32.weights[name], atol=0.05)


def test_epochs_set_the_number_of_steps(tmp_path, registry, tiny_setup):
    plan, loaded = _plan(tmp_path, registry, tiny_setup, "linear_scalarization",
                         train="steps: null, epochs: 0.5, batch_size: 40")
    trained = _train(plan, loaded, registry)
    assert trained.summary["steps"] == 3  # ceil(0.5 · 240 / 40)


def test_training_killed_with_sigkill_resumes_without_redoing_steps(tmp_path, registry,
                                                                    tiny_setup):
    """A `prefkit run` of a trainer killed (SIGKILL) after its first resumable state: no trained
    model and no output folder are left; the next run resumes from the saved step and ends with
    the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    text = recipe_text(tiny_setup, "epo", evaluate=False, train="steps: 160, checkpoint_every: 10")
    (tmp_path / "k.yaml").write_text(text)
    process = subprocess.Popen([sys.executable, "-c", "from prefkit.cli import main; main()",
                                "run", "-q", "k.yaml"], cwd=tmp_path, env=dict(os.environ),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = tmp_path / "checkpoints" / "training"
    deadline = time.monotonic() + 240
    while not list(folder.glob("*.resume.safetensors")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no resumable state was written"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    finished = [f for f in folder.glob("*.safetensors") if not f.name.endswith(".resume.safetensors")]
    assert finished == [] and not (tmp_path / "out").exists()

    plan, loaded = _plan(tmp_path, registry, tiny_setup, "epo", evaluate=False,
                         train="steps: 160, checkpoint_every: 10")
    resumed = _train(plan, loaded, registry)
    assert resumed.summary["resumed_from"] is not None and resumed.summary["resumed_from"] >= 10
    plan, loaded = _plan(tmp_path, registry, tiny_setup, "epo", evaluate=False,
                         train="steps: 160, checkpoint_every: 10, cache_dir: straight")
    straight = _train(plan, loaded, registry)
    for name in straight.weights:
        assert torch.equal(resumed.weights[name], straight.weights[name]), name
