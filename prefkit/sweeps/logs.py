"""Log records of prefkit (logger "prefkit" and below) on stderr and optionally in a file, in one
of three formats: simple (level and message), detailed (time, level, logger, process), json (one
object per line, with the record's structured fields)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

FORMATS = {
    "simple": "%(levelname)s %(message)s",
    "detailed": "%(asctime)s %(levelname)s %(name)s [%(processName)s] %(message)s",
}
LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra={"fields": {...}}` adds structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        data = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
                "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage()}
        data.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(FORMATS[fmt])


def configure_logging(level: str = "info", fmt: str = "simple", file: str | Path | None = None,
                      *, quiet: bool = False) -> None:
    """(Re)configure the "prefkit" logger. `quiet` keeps stderr to warnings and errors; the file
    (appended) gets every record at `level`. Replaces what an earlier call installed."""
    if level not in LEVELS or (fmt not in FORMATS and fmt != "json"):
        raise ValueError(f"log level {level!r} / format {fmt!r}: use {LEVELS} / simple, detailed, json")
    logger = logging.getLogger("prefkit")
    for handler in [h for h in logger.handlers if getattr(h, "_prefkit", False)]:
        logger.removeHandler(handler)
        handler.close()
    numeric = getattr(logging, level.upper())
    stderr = _StderrHandler()
    stderr.setLevel(max(numeric, logging.WARNING) if quiet else numeric)
    handlers: list[logging.Handler] = [stderr]
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(file, encoding="utf-8")
        to_file.setLevel(numeric)
        handlers.append(to_file)
    for handler in handlers:
        handler.setFormatter(_formatter(fmt))
        handler._prefkit = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(numeric)
