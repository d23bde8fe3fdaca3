"""Processes: a merge killed (SIGKILL) at any point leaves no output that looks complete and the
re-run works; Ctrl-C, SIGTERM and SIGHUP stop with one line; a full disk (a file size limit) is
one clear error with no partial output. A run owns its output: a second run on it fails at once,
an output that appears meanwhile is never replaced, stale temporaries are recognised whatever
pid they carry, and `--force` over a symlink leaves nothing behind.

Each case runs the real CLI in a child process (`crash_driver.py` stops or pauses it at a chosen
point, or the test kills it at a random moment), then checks the folder and re-runs the same
command.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import subprocess
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


def digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file of an output folder and its hash (provenance without its timing)."""
    out = {}
    for file in sorted(folder.rglob("*")):
        if file.name in skip:
            continue
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
            # killed just after the final rename, it can leave its lock file (no longer held):
            # the next run takes it over and removes it (checked below)
            assert leftovers(workdir) in ([], [".out.prefkit-lock"])
            assert invoke(cli, *RUN, "--force").exit_code == 0
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


@pytest.mark.parametrize(("name", "code", "what"), [("TERM", 143, "terminated (SIGTERM)"),
                                                 ("HUP", 129, "hung up (SIGHUP)")])
def test_sigterm_and_sighup_stop_like_ctrl_c(workdir, reference, name, code, what):
    exit_code, out, err = crash(workdir, Crash("tensor", name, TENSORS // 2, RUN))
    assert exit_code == code
    assert err.splitlines() == [f"Error: {what}; nothing half-written was left behind"]
    assert out == ""
    assert not (workdir / "out").exists() and leftovers(workdir) == []  # no temporary, no lock


def test_sigterm_during_the_final_renames_waits_for_them(cli, workdir, reference):
    """SIGTERM between moving the old output aside and the new one in: the replacement is
    finished first (never an output missing), then the run stops with its line."""
    old = write_recipe(workdir, RECIPE.replace("density: 0.5", "density: 0.2"), "old.yaml")
    assert invoke(cli, "run", old, "-o", "out", "-q").exit_code == 0
    code, out, err = crash(workdir, Crash("swap", "TERM", args=(*RUN, "--force")))
    assert code == 143
    assert err.splitlines() == ["Error: terminated (SIGTERM); nothing half-written was left behind"]
    assert digest(workdir / "out") == reference and leftovers(workdir) == []


def paused(workdir: Path, spec: Crash):
    """Start a child that waits at its point (see crash_driver); returns it once it waits."""
    process = start(spec, workdir, workdir / "child-paused")
    for _ in range(12000):  # up to 2 minutes on a loaded machine
        if (workdir / "paused").exists() or not process.is_alive():
            break
        time.sleep(0.01)
    assert (workdir / "paused").read_text() == f"{process.pid}\n"
    return process


def finish(workdir: Path, process) -> tuple[int, str, str]:
    (workdir / "resume").touch()
    process.join(120)
    log = workdir / "child-paused"
    return process.exitcode, *(Path(f"{log}{s}").read_text() for s in (".out", ".err"))


def test_a_second_run_on_the_same_output_fails_at_once(cli, workdir, reference):
    process = paused(workdir, Crash("tensor", "PAUSE", TENSORS // 2, RUN))
    for extra in ((), ("--force",)):
        started = time.perf_counter()
        second = invoke(cli, *RUN, *extra)
        assert time.perf_counter() - started < 10  # at once: it does not wait for the first
        assert second.exit_code == 2
        assert second.stderr.splitlines()[0] == (
            f"Error: output out is in use by another prefkit run (pid {process.pid}) (wait for it "
            "to finish, or choose another -o)")
        assert not (workdir / "out").exists()
    code, out, err = finish(workdir, process)
    assert code == 0, err
    assert json.loads(out)["status"] == "ok"
    assert digest(workdir / "out") == reference and leftovers(workdir) == []  # untouched


def kept_line(pid: int) -> re.Pattern:
    return re.compile(
        rf"^Error: output out appeared or changed while this run wrote it; it was left as it is, "
        rf"and the new result is kept at (\.out\.prefkit-tmp-{pid}-\d+) \(move one of them, "
        r"then run again\)$")


def test_an_output_appearing_mid_merge_is_kept(cli, workdir, reference):
    process = paused(workdir, Crash("tensor", "PAUSE", TENSORS // 2, RUN))
    (workdir / "out").mkdir()
    (workdir / "out" / "mine.txt").write_text("precious\n")
    code, out, err = finish(workdir, process)
    assert code == 2
    match = kept_line(process.pid).match(err.splitlines()[0])
    assert match, err
    assert [p.name for p in (workdir / "out").iterdir()] == ["mine.txt"]
    assert (workdir / "out" / "mine.txt").read_text() == "precious\n"  # not clobbered
    kept = workdir / match.group(1)
    assert digest(kept, skip=(".prefkit-kept",)) == reference  # the new result, complete
    assert leftovers(workdir) == [kept.name]  # and no lock
    again = invoke(cli, *RUN)  # a later run neither replaces `out` nor removes the kept result
    assert again.exit_code == 2 and again.stderr.splitlines()[0].startswith(
        "Error: output out already exists")
    assert leftovers(workdir) == [kept.name] and digest(kept, skip=(".prefkit-kept",)) == reference


def test_force_replaces_only_the_output_it_agreed_to(cli, workdir, reference):
    """With --force, an old output swapped for another folder mid-merge is not replaced."""
    old = write_recipe(workdir, RECIPE.replace("density: 0.5", "density: 0.2"), "old.yaml")
    assert invoke(cli, "run", old, "-o", "out", "-q").exit_code == 0
    process = paused(workdir, Crash("tensor", "PAUSE", TENSORS // 2, (*RUN, "--force")))
    (workdir / "out").rename(workdir / "moved")
    (workdir / "out").mkdir()
    (workdir / "out" / "prefkit.json").write_text("{}\n")  # another run's? not the agreed one
    code, out, err = finish(workdir, process)
    assert code == 2
    match = kept_line(process.pid).match(err.splitlines()[0])
    assert match, err
    assert (workdir / "out" / "prefkit.json").read_text() == "{}\n"
    assert digest(workdir / match.group(1), skip=(".prefkit-kept",)) == reference
    assert leftovers(workdir) == [match.group(1)]


def test_stale_temporaries_with_a_reused_pid_are_removed(cli, workdir, reference):
    """A temporary whose pid now belongs to another live process is stale all the same: its
    name's start time is not that process's (or it has none, and this run holds the lock)."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        names = [f".out.prefkit-tmp-{other.pid}", f".out.prefkit-tmp-{other.pid}-1"]
        for name in names:
            (workdir / name).mkdir()
            (workdir / name / "model.safetensors").write_bytes(b"\0" * 4096)
        result = invoke(cli, "run", "recipe.yaml", "-o", "out")
    finally:
        other.kill()
        other.wait()
    assert result.exit_code == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "removed" in line] == [
        f"out: removed {name} left by an interrupted run" for name in names]
    assert digest(workdir / "out") == reference and leftovers(workdir) == []


def test_force_on_a_symlinked_output_leaves_nothing_behind(cli, workdir, reference):
    old = write_recipe(workdir, RECIPE.replace("density: 0.5", "density: 0.2"), "old.yaml")
    assert invoke(cli, "run", old, "-o", "real", "-q").exit_code == 0
    real = digest(workdir / "real")
    (workdir / "out").symlink_to("real")
    result = invoke(cli, *RUN, "--force")
    assert result.exit_code == 0, result.stderr
    assert not (workdir / "out").is_symlink() and digest(workdir / "out") == reference
    assert digest(workdir / "real") == real  # what the link pointed to is not ours to delete
    assert leftovers(workdir) == []  # no .out.prefkit-old-*


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
