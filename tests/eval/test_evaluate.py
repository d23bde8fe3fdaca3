"""Evaluation on tiny seeded classifiers and local CSV data."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from prefkit.api import Task
from prefkit.cli import build_cli
from prefkit.errors import DataError
from prefkit.eval.evaluate import EvalSettings, TaskHead, evaluate
from prefkit.eval.labels import label_order
from prefkit.eval.metrics import accuracy, macro_f1, majority
from prefkit.registry import load_registry
from prefkit.testing.classifiers import WORDS, make_tiny_classifier
from tests.conftest import builtin_plugins

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "cache"))


def write_csv(path, rows, fields=("text", "label")):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(fields)
        writer.writerows(rows)
    return path


def sentences(n, seed, pair=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = 1 + int(torch.randint(0, 9, (1,), generator=g))
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (length,), generator=g)]
        text = " ".join(words)
        label = int(torch.randint(0, 3, (1,), generator=g))
        out.append((text, text[::-1].split(" ")[0] or "a", label) if pair else (text, label))
    return out


@pytest.fixture
def task3(tmp_path):
    rows = sentences(57, seed=1)
    write_csv(tmp_path / "test.csv", rows)
    return Task(name="toy", dataset="csv", text_fields=("text",), label_names=("a", "b", "c"),
                splits={"test": "test"}, data_files={"test": str(tmp_path / "test.csv")}), rows


def reference_predictions(model_dir, texts):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    preds = []
    with torch.inference_mode():
        for text in texts:  # one at a time: no padding at all
            preds.append(int(model(**tok(text, return_tensors="pt")).logits[0].argmax()))
    return preds


def test_metrics_on_hand_made_cases():
    labels, preds = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    assert accuracy(labels, preds) == pytest.approx(4 / 6)
    # F1: class 0: tp1 fp1 fn1 → 0.5; class 1: tp2 fp1 fn0 → 0.8; class 2: tp1 fp0 fn1 → 2/3
    assert macro_f1(labels, preds, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert macro_f1([0, 0], [0, 0], 2) == pytest.approx(0.5)  # an absent class scores 0
    assert majority([1, 1, 0, 2]) == 0.5


def test_batched_padded_evaluation_equals_one_by_one(tmp_path, task3):
    task, rows = task3
    model = make_tiny_classifier(tmp_path / "m", ["a", "b", "c"], seed=3)
    want = reference_predictions(model, [r[0] for r in rows])
    assert len(set(want)) > 1  # the model does not predict a constant
    scores = evaluate(model, [TaskHead(task, [0, 1, 2])], EvalSettings(batch_size=8))["toy"]
    assert scores["n"] == 57
    assert scores["accuracy"] == pytest.approx(accuracy([r[1] for r in rows], want))
    assert scores["macro_f1"] == pytest.approx(macro_f1([r[1] for r in rows], want, 3))


def test_label_order_follows_the_model_config(tmp_path, task3):
    task, _ = task3
    model = make_tiny_classifier(tmp_path / "m", ["a", "b", "c"], seed=3)
    # the same classifier with its outputs permuted and its id2label permuted alike
    perm = [2, 0, 1]
    m = transformers.AutoModelForSequenceClassification.from_pretrained(model)
    with torch.no_grad():
        m.classifier.weight.copy_(m.classifier.weight[perm])
        m.classifier.bias.copy_(m.classifier.bias[perm])
    m.config.id2label = {i: ["a", "b", "c"][p] for i, p in enumerate(perm)}
    m.config.label2id = {v: k for k, v in m.config.id2label.items()}
    m.save_pretrained(tmp_path / "perm")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "perm" / f).write_bytes((model / f).read_bytes())
    order = label_order(task, id2label={str(k): v for k, v in m.config.id2label.items()})
    assert order == perm
    a = evaluate(model, [TaskHead(task, [0, 1, 2])], EvalSettings())["toy"]
    b = evaluate(tmp_path / "perm", [TaskHead(task, order)], EvalSettings())["toy"]
    # the loss sums the same logits in another order: equal up to rounding
    assert a.pop("loss") == pytest.approx(b.pop("loss"), rel=1e-6) and a == b


def test_label_order_sources_and_errors():
    task = Task(name="t", dataset="x", text_fields=("text",), label_names=("neg", "pos"),
                known_label_orders={"org/model": ("pos", "neg")})
    assert label_order(task, id2label={"0": "POS", "1": "Neg"}) == [1, 0]
    assert label_order(task, id2label={"0": "LABEL_0", "1": "LABEL_1"}, model_id="org/model") == [1, 0]
    assert label_order(task, id2label=None, override=["neg", "pos"]) == [0, 1]
    with pytest.raises(DataError, match="cannot tell the label order of model other"):
        label_order(task, id2label={"0": "LABEL_0", "1": "LABEL_1"}, model_id="other")
    with pytest.raises(DataError, match=r"has labels \['a', 'b'\] .* do not match"):
        label_order(task, id2label={"0": "a", "1": "b"}, model_id="m")


def test_subset_is_seeded_and_shared(tmp_path, task3):
    task, rows = task3
    m1 = make_tiny_classifier(tmp_path / "m1", ["a", "b", "c"], seed=1)
    settings = EvalSettings(num_samples=20, seed=7)
    r1 = evaluate(m1, [TaskHead(task, [0, 1, 2])], settings)["toy"]
    r2 = evaluate(m1, [TaskHead(task, [0, 1, 2])], settings)["toy"]
    assert r1 == r2 and r1["n"] == 20
    from prefkit.eval.data import subset_indices

    chosen = subset_indices(57, 20, 7)
    assert chosen == sorted(chosen) and len(set(chosen)) == 20 and chosen != list(range(20))
    assert r1["majority"] == majority([rows[i][1] for i in chosen])


def test_tokenization_is_cached(tmp_path, task3, monkeypatch):
    task, _ = task3
    model = make_tiny_classifier(tmp_path / "m", ["a", "b", "c"])
    first = evaluate(model, [TaskHead(task, [0, 1, 2])], EvalSettings())
    files = list((tmp_path / "cache" / "tokens").glob("*.json"))
    assert len(files) == 1 and "-toy-test-128-" in files[0].name
    # (monkeypatch.undo() here once reset PREFKIT_CACHE too, so the second run read whatever
    # cache the environment had: the test then passed or failed by what ran before it)
    calls = []
    real = transformers.PreTrainedTokenizerFast.__call__
    monkeypatch.setattr(transformers.PreTrainedTokenizerFast, "__call__",
                        lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    assert evaluate(model, [TaskHead(task, [0, 1, 2])], EvalSettings()) == first
    assert calls == []


def test_data_errors(tmp_path, task3):
    task, _ = task3
    model = make_tiny_classifier(tmp_path / "m", ["a", "b"])
    with pytest.raises(DataError, match="task 'toy' has 3 labels but the model's head has 2"):
        evaluate(model, [TaskHead(task, [0, 1])], EvalSettings())
    model3 = make_tiny_classifier(tmp_path / "m3", ["a", "b", "c"])
    with pytest.raises(DataError, match="task 'toy' has no 'validation' split"):
        evaluate(model3, [TaskHead(task, [0, 1, 2])], EvalSettings(split="validation"))
    bad = Task(name="bad", dataset="csv", text_fields=("sentence",), label_names=("a", "b", "c"),
               splits={"test": "test"}, data_files=task.data_files)
    with pytest.raises(DataError, match="split 'test' has no field.* sentence"):
        evaluate(model3, [TaskHead(bad, [0, 1, 2])], EvalSettings())
    hub = Task(name="hub", dataset="someorg/not-cached-dataset", text_fields=("text",),
               label_names=("a", "b", "c"), splits={"test": "test"})
    with pytest.raises(DataError, match="cannot load split 'test' of dataset 'someorg/not-cached"):
        evaluate(model3, [TaskHead(hub, [0, 1, 2])], EvalSettings())


def _cli():
    return build_cli(lambda: load_registry(entry_points=False, plugins=builtin_plugins()))


def test_tasks_command_lists_reference_tasks():
    result = CliRunner().invoke(_cli(), ["tasks", "--json"])
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["mnli"]["dataset"] == "SetFit/mnli" and rows["mnli"]["fields"] == ["text1", "text2"]
    assert rows["ag_news"]["labels"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert rows["imdb"]["plugin"] == "reference_tasks"


def _merge_recipe(tmp_path, rows_a, rows_b, heads="padded", extra=""):
    make_tiny_classifier(tmp_path / "base", ["x", "y"], seed=0)
    make_tiny_classifier(tmp_path / "ta", ["a", "b", "c"], seed=1)
    make_tiny_classifier(tmp_path / "tb", ["neg", "pos"], seed=2)
    write_csv(tmp_path / "a.csv", rows_a)
    write_csv(tmp_path / "b.csv", rows_b)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
merge_method: task_arithmetic
base_model: base
models:
  - {{model: ta, task: toy_a}}
  - {{model: tb, task: toy_b}}
parameters: {{lambda: 0.5}}
preference: [0.6, 0.4]
heads: {heads}
tasks:
  toy_a: {{dataset: csv, text_fields: [text], label_names: [a, b, c], splits: {{test: test}},
          data_files: {{test: {tmp_path / 'a.csv'}}}}}
  toy_b: {{dataset: csv, text_fields: [text], label_names: [neg, pos], splits: {{test: test}},
          data_files: {{test: {tmp_path / 'b.csv'}}}}}
evaluate: {{batch_size: 4}}
{extra}""")
    return recipe


def test_run_with_evaluate_scores_each_task_through_its_head(tmp_path):
    rows_a = sentences(30, seed=4)
    rows_b = [(t, lab % 2) for t, lab in sentences(30, seed=5)]
    recipe = _merge_recipe(tmp_path, rows_a, rows_b)
    result = CliRunner().invoke(_cli(), ["run", str(recipe), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["tasks"] == line["results"] and saved["preference"] == [0.6, 0.4]
    assert saved["method"] == "task_arithmetic" and saved["parameters"] == {"lambda": 0.5}
    # reference: the merged model one example at a time, logits sliced to the task's labels
    merged = tmp_path / "out"
    tok = transformers.AutoTokenizer.from_pretrained(merged)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(merged).eval()
    assert model.config.num_labels == 3
    for name, rows, k in (("toy_a", rows_a, 3), ("toy_b", rows_b, 2)):
        with torch.inference_mode():
            preds = [int(model(**tok(t, return_tensors="pt")).logits[0, :k].argmax()) for t, _ in rows]
        assert saved["tasks"][name]["accuracy"] == pytest.approx(accuracy([r[1] for r in rows], preds))


def test_per_task_heads_use_each_tasks_own_classifier(tmp_path):
    rows_a = sentences(30, seed=4)
    rows_b = [(t, lab % 2) for t, lab in sentences(30, seed=5)]
    recipe = _merge_recipe(tmp_path, rows_a, rows_b, heads="per_task")
    result = CliRunner().invoke(_cli(), ["run", str(recipe), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.stderr
    heads = sorted(p.name for p in (tmp_path / "out" / "heads").iterdir())
    assert heads == ["toy_a.safetensors", "toy_b.safetensors"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["heads"] == "per_task"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    own = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "tb")
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.weight[:2] = own.classifier.weight
        model.classifier.bias[:2] = own.classifier.bias
        preds = [int(model(**tok(t, return_tensors="pt")).logits[0, :2].argmax()) for t, _ in rows_b]
    assert saved["tasks"]["toy_b"]["accuracy"] == pytest.approx(accuracy([r[1] for r in rows_b], preds))


def test_unknown_task_with_evaluate_is_a_recipe_error(tmp_path):
    recipe = _merge_recipe(tmp_path, sentences(5, 1), sentences(5, 2), extra="")
    text = recipe.read_text().replace("task: toy_b", "task: toy_z")
    recipe.write_text(text)
    result = CliRunner().invoke(_cli(), ["validate", str(recipe)])
    assert result.exit_code == 3
    assert "models[1].task: unknown task 'toy_z'" in result.stderr


def test_eval_command(tmp_path, task3):
    task, rows = task3
    model = make_tiny_classifier(tmp_path / "m", ["neg", "pos"])
    write_csv(tmp_path / "b.csv", [(t, lab % 2) for t, lab in rows])
    registry = load_registry(entry_points=False, plugins={**builtin_plugins(), "toy": _ToyPlugin(
        tmp_path / "b.csv")})
    cli = build_cli(lambda: registry)
    result = CliRunner().invoke(cli, ["eval", str(model), "--tasks", "toy_b", "--num-samples", "10"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["tasks"]["toy_b"]["n"] == 10
    assert "accuracy" in result.stderr  # the table
    missing = CliRunner().invoke(cli, ["eval", str(model), "--tasks", "nope"])
    assert missing.exit_code == 3 and "unknown task 'nope'" in missing.stderr


class _ToyPlugin:
    def __init__(self, file):
        self.file = file

    from prefkit.api import hookimpl

    @hookimpl
    def prefkit_register_tasks(self, register):
        register(Task(name="toy_b", dataset="csv", text_fields=("text",), label_names=("neg", "pos"),
                      splits={"test": "test"}, data_files={"test": str(self.file)}))


def test_loss_is_the_cross_entropy_of_the_task_logits(tmp_path, task3):
    """`loss` and the per-example losses are F.cross_entropy over the logits sliced to the
    task's labels, the target being the output that means the example's label."""
    import torch.nn.functional as F

    from prefkit.eval.evaluate import collect_examples, evaluate_model

    task, rows = task3
    folder = make_tiny_classifier(tmp_path / "m", ["p", "q", "r", "s"], seed=5)  # 4 outputs
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    seen = []  # every batch's logits, in the order the evaluator ran them
    model.register_forward_hook(lambda mod, args, kw_out: seen.append(kw_out.logits.clone()))
    order = [2, 0, 1]  # output j means task label order[j]
    settings = EvalSettings(batch_size=8, num_samples=40, seed=2)
    results, per_example = evaluate_model(tokenizer, model, [TaskHead(task, order)], settings)
    from prefkit.eval.data import subset_indices
    from prefkit.eval.evaluate import _batches, eval_data

    data = eval_data(tokenizer, task, settings)
    assert data.indices == subset_indices(57, 40, 2)
    reference = torch.zeros(40)
    for (batch_rows, _), logits in zip(_batches(data.encoded, 8, 0), seen, strict=True):
        targets = torch.tensor([order.index(data.labels[r]) for r in batch_rows])
        reference[batch_rows] = F.cross_entropy(logits[:, :3], targets, reduction="none")
    arrays = per_example["toy"]
    torch.testing.assert_close(torch.from_numpy(arrays["loss"]), reference, rtol=1e-6, atol=1e-6)
    assert results["toy"]["loss"] == pytest.approx(float(reference.double().mean()), rel=1e-6)
    assert reference.std() > 0.1 and results["toy"]["loss"] > 0
    assert arrays["index"].tolist() == data.indices
    assert arrays["correct"].tolist() == [p == y for p, y in zip(arrays["prediction"], data.labels)]
    assert arrays["correct"].mean() == pytest.approx(results["toy"]["accuracy"])
    # a model folder scored by `evaluate` hands the same arrays to a collect_examples() block
    with collect_examples() as collected:
        again = evaluate(folder, [TaskHead(task, order)], settings)
    assert again == results and len(collected) == 1 and collected[0].device == "cpu"
    for key, value in collected[0].examples["toy"].items():
        assert (value == arrays[key]).all(), key
    assert evaluate(folder, [TaskHead(task, order)], settings) == results  # nothing collects now
    assert len(collected) == 1
