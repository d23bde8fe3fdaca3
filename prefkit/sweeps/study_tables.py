"""The study report's Markdown tables, from the rows of prefkit.sweeps.study_rows / study_grid."""

from __future__ import annotations

from typing import Any

from prefkit.sweeps.study import Study


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def with_ci(value: float | None, ci: list[float] | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    return fmt(value, digits) + ("" if ci is None else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]")


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def pref_text(preference: list[float]) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in preference) + "]"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def methods_table(rows: list[dict[str, Any]]) -> str:
    header = ["method", "points", "seeds", "front", "hypervolume [95% CI]", "mean [95% CI]",
              "ray angle (°)", "non-unif.", "wall s/pt", "CPU s/pt", "train s/pt", "interval"]
    body = [[r["method"], str(r["points"]), str(r["seeds"]), str(r["front"]),
             with_ci(r["hypervolume"], r["hypervolume_ci"]), with_ci(r["mean"], r["mean_ci"]),
             fmt(r["ray_angle"], 1), fmt(r["non_uniformity"], 3), seconds(r["cost"]["wall_s"]),
             seconds(r["cost"]["cpu_s"]), seconds(r["cost"]["train_s"]), r["interval"] or "none"]
            for r in rows]
    return table(header, body)


def tasks_table(study: Study, groups: list[dict[str, Any]]) -> str:
    header = ["method", "preference", "seeds", *[f"{t} [95% CI]" for t in study.tasks],
              "Σ p·score [95% CI]", "ray angle (°)", "non-unif."]
    body = [[g["method"], pref_text(g["preference"]), str(g["seeds"]),
             *[with_ci(g["tasks"][t]["mean"], g["tasks"][t]["ci"], 3) for t in study.tasks],
             with_ci(g["weighted"]["mean"], g["weighted"]["ci"], 3), fmt(g["ray_angle"], 1),
             fmt(g["non_uniformity"], 3)] for g in groups]
    return table(header, body)


def comparison_lines(pairs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for c in pairs:
        if not c["tested"]:
            lines.append(f"- {c['a']} vs {c['b']}: not tested ({c['preferences']} common preferences; "
                         "needs several seeds or per-example results)")
            continue
        lines.append(f"- {c['a']} better than {c['b']} at p<0.05 on {c['a_better']} of "
                     f"{c['tested']} preferences ({c['b']} better on {c['b_better']}); "
                     f"{' and '.join(c['tests'])}")
    return lines


def comparisons_table(pairs: list[dict[str, Any]]) -> str:
    header = ["A", "B", "preference", "A − B [95% CI]", "p", "test", "n"]
    body = [[d["a"], d["b"], pref_text(d["preference"]), with_ci(d["difference"], d["ci"]),
             "–" if d["p_value"] is None else f"{d['p_value']:.4f}", d["test"], str(d["n"])]
            for c in pairs for d in c["details"]]
    return table(header, body)


def cost_table(rows: list[dict[str, Any]]) -> str:
    header = ["method", "points", "wall s/pt", "CPU s/pt", "merge s/pt", "eval s/pt",
              "train s/pt (trained, cached)", "total wall s", "total CPU s", "device"]
    body = []
    for r in rows:
        c = r["cost"]
        body.append([r["method"], str(r["points"]), seconds(c["wall_s"]), seconds(c["cpu_s"]),
                     seconds(c["merge_s"]), seconds(c["eval_s"]),
                     f"{seconds(c['train_s'])} ({c['trained']}, {c['train_cached']})",
                     seconds(c["total_wall_s"]), seconds(c["total_cpu_s"]),
                     ", ".join(c["devices"]) or "–"])
    return table(header, body)


def zoo_line(zoo: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    if zoo["total_s"] is None:
        return ("- Zoo: the input models' one-off fine-tuning cost is not recorded "
                f"({zoo['models']} model folders found, none with a prefkit-demo.json train_seconds).")
    total = sum(r["cost"]["total_wall_s"] or 0.0 for r in rows)
    return (f"- Zoo (one-off, shared by every method): fine-tuning {zoo['known']} of "
            f"{zoo['models']} input models took {seconds(zoo['total_s'])} s in all; the whole grid "
            f"took {seconds(total)} s of wall time. Amortised over the grid's "
            f"{sum(r['points'] for r in rows)} points that is "
            f"{seconds(zoo['total_s'] / max(1, sum(r['points'] for r in rows)))} s a point.")


def grid_table(grid: list[dict[str, Any]]) -> str:
    header = ["family", "setting", "value", "method", "seeds", "hypervolume [95% CI]",
              "mean [95% CI]", "wall s/pt"]
    body = [[g["family"], g["setting"], str(g["value"]), g["method"], str(g["seeds"]),
             with_ci(g["hypervolume"], g["hypervolume_ci"]), with_ci(g["mean"], g["mean_ci"]),
             seconds(g["wall_s"])] for g in grid]
    return table(header, body)


def lambda_table(study: Study, rows: list[dict[str, Any]]) -> str:
    header = ["method", "preference", "seeds", "granularity",
              *[f"λ {t} (mean; min–max)" for t in study.tasks]]
    body = []
    for r in rows:
        cells = [f"{r['tasks'][t]:.3f}" + ("" if r["granularity"] == "task" else
                                           f" ({r['range'][t][0]:.3f}–{r['range'][t][1]:.3f})")
                 for t in study.tasks]
        body.append([r["method"], pref_text(r["preference"]), str(r["seeds"]),
                     f"{r['granularity']} ({len(r['groups'])} groups)" if r["granularity"] == "layer"
                     else "task", *cells])
    return table(header, body)


def points_table(study: Study, points: list[dict[str, Any]]) -> str:
    header = ["method", "preference", "seed", *study.tasks, "mean", "ray angle (°)", "non-unif.",
              "front", "wall s"]
    body = [[r["method"], pref_text(r["preference"]), "–" if r["seed"] is None else str(r["seed"]),
             *[fmt(r["scores"][t]) for t in study.tasks], fmt(r["mean"]), fmt(r["ray_angle"], 1),
             fmt(r["non_uniformity"], 3), "●" if r["front"] else "", seconds(r["wall_s"])]
            for r in points]
    return table(header, body)
