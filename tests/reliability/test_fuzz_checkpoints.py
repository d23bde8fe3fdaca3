"""Property tests: hostile variants of a valid tiny checkpoint (its safetensors headers, its index,
its config.json, its files) either merge or fail with prefkit's own one-line errors: no
traceback, no hang, nothing left in or next to the output location.

Each example copies zoo/imdb, damages it one way and runs `prefkit run` through the CLI on a
recipe that merges it with zoo/mrpc (both have two labels, so a harmless mutation merges). The
default run tries FAST examples per property (a few seconds each); `pytest -m slow` tries SLOW.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from prefkit.cli import build_cli
from prefkit.testing import make_zoo
from tests.reliability.conftest import pinned_registry

FAST, SLOW = 50, 1000
CLI = build_cli(pinned_registry)
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX = "model.safetensors.index.json"
HOLE = "\x00hole\x00"  # stands for a raw JSON fragment in a document being built
HANG_SECONDS = 60  # one example that takes this long is a hang


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=examples == FAST,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-zoo")
    make_zoo(root / "zoo", tasks={"imdb": 2, "mrpc": 2})
    return root / "zoo"


# --- raw JSON fragments: hostile values, written as JSON text -------------------------------------

ODD_TEXT = ["", " ", "\x00", "\n", "\t", "\ud800", "é", "\u202e", "x" * 2000, "../x.safetensors",
            "/etc/passwd", "a/b.safetensors", "a\\b.safetensors", ".safetensors", "..",
            SHARDS[0], SHARDS[1], "F32", "F16", "BF16", "I64", "BOOL", "C64", "f32", "LABEL_0",
            "0", "-1", "1e3", "NaN", "roberta", "__metadata__"]
scalars = (st.none() | st.booleans()
           | st.integers(-2**70, 2**70) | st.sampled_from([0, 1, 2, 16, 64, -1, 2**31, 2**62,
                                                           2**63, 2**64, 10**12])
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(ODD_TEXT) | st.text(max_size=20))
shallow = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.sampled_from(ODD_TEXT) | st.text(max_size=6), inner,
                                         max_size=4), max_leaves=10)
deep = st.sampled_from([63, 64, 65, 200, 5000, 200_000]).flatmap(lambda d: st.sampled_from([
    "[" * d + "]" * d, '{"a":' * d + "1" + "}" * d, "[" * d]))
fragments = (shallow.map(json.dumps) | deep
             | st.sampled_from(["1" * 5000, "-0", "1e400", "01", "tru", '"\\u', '"\\ud800"',
                                '"a\\u0000b"', "", "[1,]", "{\"a\" 1}", "\"\x00\""]))


def with_hole(document, fragment: str) -> bytes:
    """`document` as JSON, with the HOLE string replaced by a raw fragment."""
    return json.dumps(document).replace(json.dumps(HOLE), fragment).encode("utf-8",
                                                                           "surrogatepass")


def set_path(document, path: tuple, value):
    """A copy of `document` with `path` (keys, or indexes into lists) set to `value`."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        out = dict(document)
        out[head] = set_path(document.get(head), rest, value)
        return out
    if isinstance(document, list) and isinstance(head, int) and head < len(document):
        out = list(document)
        out[head] = set_path(document[head], rest, value)
        return out
    return {head: set_path(None, rest, value)}


# --- damage of each kind: (folder) -> None -----------------------------------------------------

def read_st(file: Path) -> tuple[dict, bytes, bytes]:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8:8 + n], raw[8 + n:]


@st.composite
def header_damage(draw) -> Callable[[Path], None]:
    shard = draw(st.sampled_from(SHARDS))
    kind = draw(st.sampled_from(["value", "value", "value", "bytes", "length", "truncate",
                                 "extend"]))
    where = draw(st.sampled_from(["entry", "entry", "metadata", "new"]))
    key = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
    fragment = draw(fragments)
    which = draw(st.integers(0, 200))
    at = draw(st.integers(0, 10**6))
    spliced = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\xff", b'"', b"[", b"}"]))
    length = draw(st.integers(0, 2**64 - 1) | st.integers(0, 10_000))
    extra = draw(st.binary(min_size=1, max_size=64))

    def damage(folder: Path) -> None:
        file = folder / shard
        header, blob, data = read_st(file)
        if kind == "value":  # one hostile value: in a tensor's entry, as __metadata__, or new
            names = sorted(n for n in header if n != "__metadata__")
            document = (set_path(header, (names[which % len(names)], key), HOLE)
                        if where == "entry" else {**header, {"metadata": "__metadata__"}.get(
                            where, "odd.tensor"): HOLE})
            blob = with_hole(document, fragment)
        elif kind == "bytes":  # a few bytes spliced into the header's text
            blob = blob[:at % (len(blob) + 1)] + spliced + blob[at % (len(blob) + 1):]
        elif kind == "length":  # the declared header length lies
            file.write_bytes(struct.pack("<Q", length) + blob + data)
            return
        elif kind == "truncate":
            raw = file.read_bytes()
            file.write_bytes(raw[:at % (len(raw) + 1)])
            return
        else:
            file.write_bytes(file.read_bytes() + extra)
            return
        file.write_bytes(struct.pack("<Q", len(blob)) + blob + data)

    return damage


@st.composite
def index_damage(draw) -> Callable[[Path], None]:
    kind = draw(st.sampled_from(["shard", "shard", "weight_map", "document", "entry", "text"]))
    fragment = draw(fragments)
    odd_name = draw(st.sampled_from(ODD_TEXT) | st.text(max_size=12))
    which = draw(st.integers(0, 200))
    cut = draw(st.integers(0, 10**5))

    def damage(folder: Path) -> None:
        file = folder / INDEX
        index = json.loads(file.read_text())
        names = sorted(index["weight_map"])
        name = names[which % len(names)]
        if kind == "shard":  # a tensor's shard: a hostile value, or an odd file name
            value = HOLE if which % 2 else odd_name
            raw = with_hole(set_path(index, ("weight_map", name), value), fragment)
        elif kind == "weight_map":
            raw = with_hole(set_path(index, ("weight_map",), HOLE), fragment)
        elif kind == "document":
            raw = fragment.encode("utf-8", "surrogatepass")
        elif kind == "entry":  # an odd tensor name, or one dropped
            weight_map = dict(index["weight_map"])
            weight_map[odd_name] = weight_map.pop(name) if which % 2 else SHARDS[0]
            raw = json.dumps({**index, "weight_map": weight_map}).encode("utf-8", "surrogatepass")
        else:
            raw = file.read_bytes()[:cut % (len(file.read_bytes()) + 1)]
        file.write_bytes(raw)

    return damage


CONFIG_KEYS = ["num_labels", "id2label", "label2id", "num_hidden_layers", "n_layer", "num_layers",
               "model_type", "architectures", "torch_dtype", "hidden_size", "odd"]


@st.composite
def config_damage(draw) -> Callable[[Path], None]:
    kind = draw(st.sampled_from(["key", "key", "key", "id2label", "document", "text"]))
    key = draw(st.sampled_from(CONFIG_KEYS))
    fragment = draw(fragments)
    label_key = draw(st.sampled_from(ODD_TEXT) | st.text(max_size=6))
    cut = draw(st.integers(0, 5000))
    drop_labels = draw(st.booleans())

    def damage(folder: Path) -> None:
        file = folder / "config.json"
        config = json.loads(file.read_text())
        if drop_labels and kind == "key" and key == "num_labels":
            config.pop("id2label")
        if kind == "key":
            raw = with_hole(set_path(config, (key,), HOLE), fragment)
        elif kind == "id2label":  # an odd class index, or a hostile class name
            labels = {**config["id2label"], label_key: HOLE}
            raw = with_hole({**config, "id2label": labels}, fragment)
        elif kind == "document":
            raw = fragment.encode("utf-8", "surrogatepass")
        else:
            raw = file.read_bytes()[:cut]
        file.write_bytes(raw)

    return damage


@st.composite
def file_damage(draw) -> Callable[[Path], None]:
    name = draw(st.sampled_from([*SHARDS, INDEX, "config.json"]))
    kind = draw(st.sampled_from(["loop", "fifo", "folder", "empty", "dangling", "sparse"]))

    def damage(folder: Path) -> None:
        target = folder / name
        if kind == "sparse":  # grown by a hole far past any bound
            with open(target, "r+b") as fh:
                fh.truncate(2**34)
            return
        target.unlink()
        if kind == "loop":
            os.symlink(target.name, target)
        elif kind == "fifo":
            os.mkfifo(target)
        elif kind == "folder":
            target.mkdir()
        elif kind == "empty":
            target.write_bytes(b"")
        else:
            os.symlink("nowhere.safetensors", target)

    return damage


# --- the property ------------------------------------------------------------------------------

def _alarm(signum, frame):
    raise TimeoutError(f"one example ran past {HANG_SECONDS} s: a hang")


def _event(text: str) -> None:
    if currently_in_test_context():  # --hypothesis-show-statistics counts the outcomes
        event(text)


def outcome(zoo: Path, damage: Callable[[Path], None]) -> str:
    """'ok' or 'error'; anything else fails the test."""
    work = Path(tempfile.mkdtemp(prefix="fuzz-", dir=zoo.parent))
    try:
        bad = work / "bad"
        shutil.copytree(zoo / "imdb", bad)
        damage(bad)
        recipe = work / "recipe.yaml"
        recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {zoo / 'mrpc'}\n"
                          f"  - model: {bad}\nparameters: {{weight: 0.5}}\n")
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(HANG_SECONDS)
        try:
            result = CliRunner().invoke(CLI, ["run", str(recipe), "-o", str(work / "out"), "-q"])
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        left = sorted(p.name for p in work.iterdir() if p.name not in ("bad", "recipe.yaml"))
        if result.exit_code == 0:
            assert left == ["out"] and (work / "out" / "model.safetensors").is_file(), left
            _event("merged")
            return "ok"
        lines = result.stderr.splitlines()
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code in (1, 3), result.stderr
        assert "Traceback" not in result.stderr and lines, result.stderr
        assert all(line.startswith("Error: ") and len(line) > 12 for line in lines), lines
        assert left == [], left  # nothing in or next to the output location
        _event(f"exit {result.exit_code}")
        return "error"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@fuzz(FAST)
@given(damage=header_damage())
def test_hostile_safetensors_headers(zoo, damage):
    outcome(zoo, damage)


@fuzz(FAST)
@given(damage=index_damage())
def test_hostile_index_files(zoo, damage):
    outcome(zoo, damage)


@fuzz(FAST)
@given(damage=config_damage())
def test_hostile_config_json(zoo, damage):
    outcome(zoo, damage)


@fuzz(FAST)
@given(damage=file_damage())
def test_hostile_files(zoo, damage):
    outcome(zoo, damage)


@pytest.mark.slow
@fuzz(SLOW)
@given(damage=st.one_of(header_damage(), index_damage(), config_damage(), file_damage()))
def test_hostile_checkpoints_many_examples(zoo, damage):
    outcome(zoo, damage)


def test_the_property_is_not_vacuous(zoo):
    """The same path merges the undamaged copy, and reports a damaged one."""
    assert outcome(zoo, lambda folder: None) == "ok"
    assert outcome(zoo, lambda folder: (folder / SHARDS[0]).write_bytes(b"\0" * 4)) == "error"
