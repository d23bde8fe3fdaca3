"""The demo zoo build's progress on stderr."""

from __future__ import annotations


class Progress:
    """Progress on stderr: a live rich bar (steps, loss) on a terminal, a few lines elsewhere."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True)
        self._bar = None

    def note(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    def start(self, description: str, total: int) -> None:
        self._description, self._total, self._done = description, total, 0
        if self.console is None:
            return
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("steps  loss {task.fields[loss]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self._bar.start()
            self._id = self._bar.add_task(description, total=total, loss="-")
        else:
            self.note(f"{description}: {total} steps")

    def advance(self, loss: float) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._id, advance=1, loss=f"{loss:.3f}")
        elif self.console is not None and (self._done % max(1, self._total // 5) == 0
                                           or self._done == self._total):
            self.note(f"{self._description}: step {self._done}/{self._total}, loss {loss:.3f}")

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
