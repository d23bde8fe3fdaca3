"""Crashes: a merge killed (SIGKILL) at any point leaves no output that looks complete and the
re-run works; Ctrl-C stops with one line; a full disk (a file size limit) is one clear error with
no partial output.

Each case runs the real CLI in a child process (`crash_driver.py` stops it at a chosen point, or
the test kills it at a random moment), then checks the folder and re-runs the same command.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import write_recipe
from tests.reliability.conftest import invoke
from tests.reliability.crash_driver import Crash, start

RECIPE = """\
merge_method: ties
base_model: zoo/base
models:
  - model: zoo/ag_news
  - model: zoo/imdb
  - model: zoo/mnli
parameters: {density: 0.5}
preference: [0.5, 0.3, 0.2]
"""
TENSORS = 41  # tensors in the merged output
RUN = ("run", "recipe.yaml", "-o", "out", "-q")


def crash(workdir: Path, spec: Crash) -> tuple[int, str, str]:
    """Run one child to its end (or its kill): exit code (negative: killed by that signal),
    stdout, stderr."""
    log = workdir / f"child-{spec.point}"
    process = start(spec, workdir, log)
    process.join(300)
    out, err = (Path(f"{log}{s}").read_text() for s in (".out", ".err"))
    for s in (".out", ".err"):
        Path(f"{log}{s}").unlink()
    return process.exitcode, out, err


def digest(folder: Path) -> dict[str, str]:
    """Every file of an output folder and its hash (provenance without its timing)."""
    out = {}
    for file in sorted(folder.rglob("*")):
        data = file.read_bytes()
        if file.name == "prefkit.json":
            data = b"\n".join(line for line in data.splitlines() if b"merge_seconds" not in line)
        out[str(file.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def leftovers(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir() if p.name.startswith(".out."))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny merges run fastest on one thread (a busy machine makes idle threads costly)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def reference(cli, workdir) -> dict[str, str]:
    """The output of an uninterrupted run (the working directory is `workdir` for every run)."""
    write_recipe(workdir, RECIPE)
    assert invoke(cli, "run", "recipe.yaml", "-o", "ref", "-q").exit_code == 0
    return digest(workdir / "ref")


CRASH_POINTS = [Crash("plan", args=RUN), Crash("tensor", count=1, args=RUN),
                Crash("tensor", count=TENSORS // 2, args=RUN),
                Crash("tensor", count=TENSORS, args=RUN), Crash("side_files", args=RUN),
                Crash("rename", args=RUN)]


@pytest.mark.parametrize("spec", CRASH_POINTS, ids=lambda c: f"{c.point}-{c.count}")
def test_sigkill_leaves_nothing_that_looks_complete(cli, workdir, reference, spec):
    code, _, err = crash(workdir, spec)
    assert code == -signal.SIGKILL, err
    assert not (workdir / "out").exists()
    rerun = invoke(cli, *RUN)
    assert rerun.exit_code == 0, rerun.stderr
    assert digest(workdir / "out") == reference
    assert leftovers(workdir) == []  # the killed run's hidden folder was cleaned up


@pytest.mark.parametrize("point", ["swap", "cleanup"])
def test_sigkill_while_replacing_an_output_loses_nothing(cli, workdir, reference, point):
    """--force over an old output: a kill between the two renames leaves no `out`, and the next
    run puts the old output back before anything else; a kill after them leaves the new one."""
    old = write_recipe(workdir, RECIPE.replace("density: 0.5", "density: 0.2"), "old.yaml")
    assert invoke(cli, "run", old, "-o", "out", "-q").exit_code == 0
    old_digest = digest(workdir / "out")
    assert old_digest != reference
    code, _, err = crash(workdir, Crash(point, args=(*RUN, "--force")))
    assert code == -signal.SIGKILL, err
    if point == "swap":
        assert not (workdir / "out").exists()
        again = invoke(cli, *RUN)  # without --force
        assert again.exit_code == 2 and "already exists" in again.stderr
        assert digest(workdir / "out") == old_digest  # restored
    else:
        assert digest(workdir / "out") == reference  # the new output, complete
    rerun = invoke(cli, *RUN, "--force")
    assert rerun.exit_code == 0, rerun.stderr
    assert digest(workdir / "out") == reference
    assert leftovers(workdir) == []


def test_sigkill_at_random_moments(cli, workdir, reference):
    """Not at chosen points: plain runs killed after seeded random delays spread over a run's
    own duration. Each leaves either nothing or the complete output."""
    started = time.perf_counter()
    code, _, err = crash(workdir, Crash("none", args=(*RUN[:3], "timed", "-q")))
    assert code == 0, err
    duration = time.perf_counter() - started
    rng = random.Random(8)
    outcomes = []
    for delay in sorted(rng.uniform(0, duration) for _ in range(6)):
        process = start(Crash("none", args=RUN), workdir, workdir / "child-random")
        time.sleep(delay)
        process.kill()
        process.join(60)
        if (workdir / "out").exists():  # it finished first: then it is complete
            outcomes.append("complete")
            assert digest(workdir / "out") == reference
        else:
            outcomes.append("nothing")
            rerun = invoke(cli, *RUN)
            assert rerun.exit_code == 0, rerun.stderr
            assert digest(workdir / "out") == reference
        assert leftovers(workdir) == []
        invoke(cli, *RUN, "--force")  # reset for the next kill: a complete output is replaced
    assert "nothing" in outcomes  # at least one kill landed mid-run


def test_ctrl_c_stops_with_one_line(workdir, reference):
    code, out, err = crash(workdir, Crash("tensor", "INT", TENSORS // 2, RUN))
    assert code == 130
    assert err.splitlines() == ["Error: interrupted; nothing half-written was left behind"]
    assert out == ""
    assert not (workdir / "out").exists() and leftovers(workdir) == []


def test_full_disk_is_one_clear_error(cli, workdir, reference):
    """RLIMIT_FSIZE stands in for a full disk: the shard write fails (EFBIG) part way. The CLI
    ignores SIGXFSZ, which would otherwise kill it silently."""
    code, out, err = crash(workdir, Crash("none", args=RUN, file_size_limit=16 * 1024))
    assert code == 2, err
    assert err.splitlines() == [
        "Error: output out: cannot write (model.safetensors): File too large (free disk space or "
        "check permissions and file size limits (ulimit -f), or write elsewhere with -o; nothing "
        "was left behind)"]
    assert json.loads(out)["status"] == "failed"
    assert not (workdir / "out").exists() and leftovers(workdir) == []
    rerun = invoke(cli, *RUN)  # space again: it works
    assert rerun.exit_code == 0 and digest(workdir / "out") == reference


def test_small_files_are_replaced_whole(tmp_path, monkeypatch):
    """results.json (eval) is written beside and renamed: a failure keeps the old file."""
    from prefkit.io.outdir import write_atomic

    target = tmp_path / "results.json"
    write_atomic(target, '{"old": true}\n')

    def fail(self, other):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, '{"new": true}\n')
    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
