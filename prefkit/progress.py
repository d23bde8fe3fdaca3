"""Progress reporting. Library code reports through a Reporter; only the CLI picks one."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def start(self, total_tensors: int, total_bytes: int, description: str) -> None: ...
    def advance(self, tensor: str, nbytes: int) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    """Says nothing (`--quiet`, tests, library use)."""

    def start(self, total_tensors: int, total_bytes: int, description: str) -> None:
        pass

    def advance(self, tensor: str, nbytes: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def finish(self) -> None:
        pass


class RichReporter:
    """A rich progress bar on stderr: tensors, bytes written, rate and ETA.

    Off a terminal rich draws no live bar; a plain line per recipe is printed instead, so CI logs
    stay readable.
    """

    def __init__(self, console=None, unit: str = "tensors"):
        from rich.console import Console

        self.console = console or Console(stderr=True, soft_wrap=True)  # no wrapping in logs
        self.unit = unit  # "tensors" (the total is bytes) or a count unit such as "examples"
        self._progress = None
        self._task = None

    def start(self, total_tensors: int, total_bytes: int, description: str) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        counting = self.unit != "tensors"
        if not self.console.is_terminal:
            size = "" if counting else f", {total_bytes / 1e6:.1f} MB"
            self.console.print(f"{description}: {total_tensors} {self.unit}{size}")
            return
        columns = [TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.fields[done]}/{task.fields[tensors]} " + self.unit)]
        if not counting:
            columns += [DownloadColumn(), TransferSpeedColumn()]
        self._progress = Progress(*columns, TimeRemainingColumn(), console=self.console,
                                  transient=False)
        self._progress.start()
        self._done = 0
        self._task = self._progress.add_task(description, total=total_bytes, done=0,
                                             tensors=total_tensors)

    def advance(self, tensor: str, nbytes: int) -> None:
        if self._progress is not None:
            self._done += 1
            self._progress.update(self._task, advance=nbytes, done=self._done)

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/dim]" if self.console.is_terminal else message)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
