"""Optional Weights & Biases logging of a sweep (`wandb:` in the recipe, extra `prefkit[wandb]`).

One W&B run per sweep run: every point is one logged step (method, preference and per-task
scores), and at the end the summary gets each method's hypervolume, mean score and alignment,
with the methods table and the report's plots. `mode: offline` writes the run under
`<output>/wandb` (upload later with `wandb sync`); `disabled` (the default) imports nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError


class NullTracker:
    def log_point(self, record: dict[str, Any]) -> None:
        pass

    def finish(self, rows: list[dict[str, Any]], images: list[Path]) -> None:
        pass


class WandbTracker:
    def __init__(self, spec, output: Path, name: str, config: dict[str, Any]):
        try:
            import wandb
        except ImportError as exc:
            raise PrefkitError("wandb: logging needs the wandb package",
                               hint="pip install 'prefkit[wandb]', or set wandb: {mode: disabled}") from exc
        self.wandb = wandb
        output.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            mode=spec.mode, project=spec.project or "prefkit", entity=spec.entity,
            group=spec.group, tags=list(spec.tags) or None, name=name, dir=str(output),
            config=config, settings=wandb.Settings(silent=True, console="off"))
        self.step = 0

    def log_point(self, record: dict[str, Any]) -> None:
        row: dict[str, Any] = {"method": record.get("label"), "status": record.get("status")}
        for task, p in zip(record.get("tasks") or [], record.get("preference") or []):
            row[f"preference/{task}"] = p
        for task, metrics in (record.get("results") or {}).items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)):
                    row[f"{metric}/{task}"] = value
        self.run.log(row, step=self.step)
        self.step += 1

    def finish(self, rows: list[dict[str, Any]], images: list[Path]) -> None:
        try:
            for row in rows:
                for metric in ("hypervolume", "mean", "alignment", "non_uniformity"):
                    if row.get(metric) is not None:
                        self.run.summary[f"{row['method']}/{metric}"] = row[metric]
            if rows:
                columns = list(rows[0])
                table = self.wandb.Table(columns=columns,
                                         data=[[_plain(r[c]) for c in columns] for r in rows])
                self.run.log({"methods": table, **{f"plots/{p.stem}": self.wandb.Image(str(p))
                                                   for p in images}}, step=self.step)
        finally:
            self.run.finish()
            # finish() can return before the service has written the run file (offline mode);
            # shutting the service down flushes it, unless another run still uses it
            if self.wandb.run is None:
                self.wandb.teardown()


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, (dict, list)) else value


def open_tracker(spec, output: Path, name: str, config: dict[str, Any]):
    if spec is None or spec.mode == "disabled":
        return NullTracker()
    return WandbTracker(spec, output, name, config)
