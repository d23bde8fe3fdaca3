"""Progress and notes on stderr: a one-line message stays one line whatever the terminal width
(rich would otherwise wrap a long path mid-way)."""

from __future__ import annotations

from prefkit.progress import RichReporter


def test_a_long_note_is_not_wrapped(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    path = "/very/long/" + "folder/" * 30 + "model.safetensors"
    reporter = RichReporter()
    reporter.note(f"{path}: head zero-padded to [4, 64]")
    reporter.start(3, 3000, f"ties → {path}")
    reporter.finish()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"{path}: head zero-padded to [4, 64]"
    assert lines[1].startswith(f"ties → {path}: 3 tensors")
