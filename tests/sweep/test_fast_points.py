"""Sweep points merged and scored in memory (prefkit.sweeps.worker) against the on-disk path,
and what every point records: each task's loss, examples.npz, cost, learned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prefkit import runner
from prefkit.recipe import load_recipe
from prefkit.sweeps.run import run_sweep
from prefkit.sweeps.worker import ON_DISK_ENV
from tests.sweep.conftest import IN_PROCESS, TWO_METHODS, by_key, write_sweep

transformers = pytest.importorskip("transformers")


@pytest.fixture
def runs(monkeypatch):
    """Counts `prefkit run`'s way through a point (runner.run_recipe) in this process."""
    calls = []
    real = runner.run_recipe
    monkeypatch.setattr(runner, "run_recipe", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _sweep(folder: Path, zoo: Path, registry, monkeypatch, *, on_disk: bool, extra: str = "",
           methods: str = TWO_METHODS, heads: str = "per_task", evaluate: str | None = None,
           edits: tuple[tuple[str, str], ...] = (), **kw) -> tuple[Path, dict]:
    path = write_sweep(folder, zoo, methods=methods, extra="keep_models: false\n" + extra, **kw)
    text = path.read_text().replace("heads: per_task", f"heads: {heads}")
    if evaluate is not None:
        text = text.replace("evaluate: {batch_size: 8, max_length: 16}", f"evaluate: {evaluate}")
    for old, new in edits:
        text = text.replace(old, new)
    path.write_text(text)
    with monkeypatch.context() as mp:
        if on_disk:
            mp.setenv(ON_DISK_ENV, "1")
        else:
            mp.delenv(ON_DISK_ENV, raising=False)
        run_sweep(load_recipe(path), registry, options=IN_PROCESS)
    return folder / "out", by_key(folder / "out")


def _examples(out: Path, record: dict) -> dict[str, np.ndarray]:
    with np.load(out / "points" / record["point"] / record["examples"]) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("heads,extra", [("per_task", ""), ("padded", ""),
                                         ("per_task", "dtype: bfloat16\n")])
def test_in_memory_scores_equal_the_on_disk_path(tmp_path, tiny_zoo, sweep_registry, monkeypatch,
                                                 runs, heads, extra):
    memory, fast = _sweep(tmp_path / "m", tiny_zoo, sweep_registry, monkeypatch, on_disk=False,
                          heads=heads, extra=extra)
    assert runs == []  # no point went prefkit run's way: nothing written or read back
    disk, slow = _sweep(tmp_path / "d", tiny_zoo, sweep_registry, monkeypatch, on_disk=True,
                        heads=heads, extra=extra)
    assert len(runs) == 6 and sorted(fast) == sorted(slow) and len(fast) == 6
    accuracies = set()
    for key, a in fast.items():
        b = slow[key]
        assert a["status"] == b["status"] == "ok" and a["merged"] and b["merged"]
        assert a["results"] == b["results"]  # accuracy, macro_f1, loss, n, ...: exactly
        ea, eb = _examples(memory, a), _examples(disk, b)
        assert sorted(ea) == sorted(eb) and {k.split(".")[1] for k in ea} >= {
            "index", "correct", "loss", "prediction"}
        for name in ea:
            assert ea[name].dtype == eb[name].dtype and np.array_equal(ea[name], eb[name]), name
        accuracies.update(r["accuracy"] for r in a["results"].values())
    assert len(accuracies) > 2  # the points really differ, so equal scores mean something


def test_merged_tensors_are_bit_identical_to_the_written_checkpoint(tmp_path, tiny_zoo,
                                                                    sweep_registry):
    from safetensors.torch import load_file

    from prefkit.engine.executor import ExecuteOptions, execute, merge_in_memory
    from prefkit.recipe.resolve import resolve

    for method, dtype in (("linear", "float32"), ("ties", "float32"), ("linear", "bfloat16"),
                          ("ties", "float16")):
        recipe = tmp_path / f"{method}_{dtype}.yaml"
        recipe.write_text(f"merge_method: {method}\nbase_model: {tiny_zoo}/base\nmodels:\n"
                          f"  - {{model: {tiny_zoo}/ta}}\n  - {{model: {tiny_zoo}/tb}}\n"
                          f"preference: [0.3, 0.7]\n"
                          + ("parameters: {density: 0.5}\n" if method == "ties" else "")
                          + f"dtype: {dtype}\noutput: {tmp_path / recipe.stem}\n")
        plan = resolve(load_recipe(recipe), sweep_registry, None)
        held = merge_in_memory(plan, ExecuteOptions(force=True))
        execute(plan, ExecuteOptions(force=True))
        written = load_file(str(plan.output / "model.safetensors"))
        assert sorted(held) == sorted(written)
        for name, tensor in written.items():
            assert held[name].dtype == tensor.dtype, name
            assert torch.equal(held[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_memory_sink_assembles_slabs_of_rows():
    from prefkit.io.writer import MemorySink, OutTensor

    whole = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    sink = MemorySink([OutTensor("w", "float32", (6, 4)), OutTensor("b", "bfloat16", (3,))])
    buffer = torch.empty(2, 4)
    for start in (0, 2, 4):  # the executor reuses its buffers: the sink must copy
        buffer.copy_(whole[start:start + 2])
        sink.write("w", buffer)
    bits = np.array([0x3F80, 0x4000, 0xC040], dtype=np.uint16)  # 1, 2, -3 as bfloat16 bits
    sink.write("b", bits, "bfloat16")
    sink.close()
    assert torch.equal(sink.tensors["w"], whole)
    assert sink.tensors["b"].tolist() == [1.0, 2.0, -3.0]
    with pytest.raises(ValueError, match="before tensor 'x'"):
        MemorySink([OutTensor("x", "float32", (1,))]).close()


def test_examples_npz_and_cost(tmp_path, tiny_zoo, sweep_registry, monkeypatch):
    from prefkit.eval.data import subset_indices

    out, records = _sweep(tmp_path, tiny_zoo, sweep_registry, monkeypatch, on_disk=False,
                          methods="  - {merge_method: linear}\n",
                          evaluate="{batch_size: 4, max_length: 16, num_samples: 10, seed: 3}")
    chosen = subset_indices(24, 10, 3)  # each csv has 24 rows
    assert chosen != list(range(10))
    for record in records.values():
        arrays = _examples(out, record)
        assert sorted(arrays) == sorted(f"{t}.{k}" for t in ("toy_a", "toy_b")
                                        for k in ("index", "correct", "loss", "prediction"))
        for task, result in record["results"].items():
            assert arrays[f"{task}.index"].dtype == np.int64
            assert arrays[f"{task}.index"].tolist() == chosen
            assert arrays[f"{task}.correct"].dtype == np.bool_
            assert arrays[f"{task}.loss"].dtype == np.float32
            assert arrays[f"{task}.correct"].mean() == pytest.approx(result["accuracy"])
            assert float(arrays[f"{task}.loss"].astype(np.float64).mean()) == pytest.approx(
                result["loss"], rel=1e-6)
            assert (arrays[f"{task}.loss"] > 0).all()
        cost = record["cost"]
        assert cost["wall_s"] >= cost["merge_s"] > 0 and cost["wall_s"] >= cost["eval_s"] > 0
        assert cost["wall_s"] >= cost["merge_s"] + cost["eval_s"] - 0.002  # rounding
        assert cost["cpu_s"] > 0 and cost["device"] == "cpu"
        assert cost["threads"] == torch.get_num_threads()
        assert cost["eval_examples"] == sum(r["n"] for r in record["results"].values()) == 20
        assert (cost["train_s"], cost["train_cached"], cost["train_examples"]) == (0, False, 0)
        assert record["learned"] is None
        stored = json.loads((out / "points" / record["point"] / "result.json").read_text())
        assert stored["cost"] == cost and stored["examples"] == "examples.npz"
    # the sweep again: every point cached, its examples.npz still there and still named
    before = {k: _examples(out, r) for k, r in records.items()}
    line = run_sweep(load_recipe(tmp_path / "sweep.yaml"), sweep_registry, options=IN_PROCESS)
    assert line["cached"] == len(records) == 3
    for key, record in by_key(out).items():  # (cached records are not appended again)
        assert record["examples"] == "examples.npz"
        assert all(np.array_equal(before[key][n], a) for n, a in _examples(out, record).items())


def test_rescored_stored_models_rewrite_examples(tmp_path, tiny_zoo, sweep_registry):
    from prefkit.sweeps import SweepOptions

    path = write_sweep(tmp_path, tiny_zoo, methods="  - {merge_method: linear}\n")  # kept models
    run_sweep(load_recipe(path), sweep_registry, options=IN_PROCESS)
    first = by_key(tmp_path / "out")
    for record in first.values():
        (tmp_path / "out" / "points" / record["point"] / "examples.npz").unlink()
    run_sweep(load_recipe(path), sweep_registry, options=SweepOptions(workers=0, evaluate_only=True))
    for key, record in by_key(tmp_path / "out").items():
        assert not record["merged"] and record["results"] == first[key]["results"]
        arrays = _examples(tmp_path / "out", record)
        assert arrays["toy_a.index"].tolist() == list(range(24))
        assert record["cost"]["merge_s"] == 0 and record["cost"]["eval_examples"] == 48


def test_worker_keeps_tokenizer_model_and_data_between_points(tmp_path, tiny_zoo,
                                                              sweep_registry, monkeypatch):
    import prefkit.eval.data as data

    counts = {"tokenizer": 0, "pretrained": 0, "from_config": 0, "split": 0}
    auto_tok = transformers.AutoTokenizer.from_pretrained.__func__
    auto_model = transformers.AutoModelForSequenceClassification
    pretrained, from_config = auto_model.from_pretrained.__func__, auto_model.from_config.__func__
    load_split = data.load_split

    def count(name, fn):
        def wrapped(*a, **k):
            counts[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        classmethod(count("tokenizer", auto_tok)))
    monkeypatch.setattr(auto_model, "from_pretrained", classmethod(count("pretrained", pretrained)))
    monkeypatch.setattr(auto_model, "from_config", classmethod(count("from_config", from_config)))
    monkeypatch.setattr("prefkit.eval.evaluate.load_split", count("split", load_split))
    _, records = _sweep(tmp_path, tiny_zoo, sweep_registry, monkeypatch, on_disk=False)
    assert len(records) == 6 and all(r["status"] == "ok" for r in records.values())
    # six points, two tasks: one tokenizer, one skeleton, each task's split read once
    assert counts == {"tokenizer": 1, "pretrained": 0, "from_config": 1, "split": 2}


def test_solver_points_record_what_they_learned(tmp_path, tiny_zoo, sweep_registry, monkeypatch):
    train = ("{steps: 2, batch_size: 4, split: validation, allow_eval_split: true, "
             "max_length: 16, device: cpu, threads: 1}")
    out, records = _sweep(tmp_path, tiny_zoo, sweep_registry, monkeypatch, on_disk=False,
                          methods=f"  - {{merge_method: adamerging, train: {train}}}\n",
                          preferences="[[0.5, 0.5]]",
                          edits=(("splits: {test: test}", "splits: {test: test, validation: test}"),))
    (record,) = records.values()
    assert record["status"] == "ok", record.get("error")
    learned, cost = record["learned"], record["cost"]
    assert set(learned["lambda"]) == {"toy_a", "toy_b"} and learned["steps"] == 2
    assert cost["train_s"] == pytest.approx(learned["seconds"]) and cost["train_s"] > 0
    assert cost["train_cached"] is False and cost["train_examples"] == 2 * 4 * 2
    assert cost["wall_s"] >= cost["merge_s"] + cost["train_s"] - 0.002
    assert _examples(out, record)["toy_b.index"].tolist() == list(range(24))
