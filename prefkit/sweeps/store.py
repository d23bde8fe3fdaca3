"""A sweep's output folder:

    <output>/sweep.yaml               the sweep recipe as run (after --set)
    <output>/results.jsonl            one line per scored (or failed) point, appended atomically
    <output>/points/<name>/recipe.yaml   the point recipe, runnable on its own
    <output>/points/<name>/model/        the merged model (dropped with keep_models: false)
    <output>/points/<name>/result.json   the point's last result, written last: "done"
    <output>/report.md, *.png         rebuilt from results.jsonl by `prefkit report`
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
POINTS = "points"


def write_atomic(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename: readers never see half of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write on an O_APPEND descriptor, then fsync: a crash
    leaves whole lines (a torn last line from a power cut is skipped when reading)."""
    data = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and _last_byte(path) != b"\n":
            data = b"\n" + data  # never glue a record onto a torn line
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every record of a results.jsonl, in order; lines that are not JSON objects are skipped."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("%s:%d: not a JSON line, skipped", path, number)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each point, by its folder name (model key, and seed with seeds: a
    deterministic merge has one model key for every seed): later runs supersede earlier ones."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        if "key" in record:
            point = str(record.get("point") or record["key"])
            out.pop(point, None)  # keep file order of the latest records
            out[point] = record
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
