"""The report's "What this shows": sentences generated from the study's numbers, each one a
statement the tables support (highest hypervolume and whether its interval overlaps the next,
paired wins, where differences are not significant, preference following, cost ratios)."""

from __future__ import annotations

from typing import Any

from prefkit.sweeps.study_tables import seconds, with_ci


def _overlap(a: list[float] | None, b: list[float] | None) -> bool | None:
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def hypervolume_lines(rows: list[dict[str, Any]]) -> list[str]:
    ranked = sorted(rows, key=lambda r: -r["hypervolume"])
    best = ranked[0]
    line = (f"- **{best['method']}** has the highest hypervolume, "
            f"{with_ci(best['hypervolume'], best['hypervolume_ci'])}")
    if len(ranked) == 1:
        return [line + "."]
    nxt = ranked[1]
    overlap = _overlap(best["hypervolume_ci"], nxt["hypervolume_ci"])
    second = f"{nxt['method']}'s {with_ci(nxt['hypervolume'], nxt['hypervolume_ci'])}"
    if overlap is None:
        line += (f"; next is {second}. Without an interval for both (one seed and no per-example "
                 "results) the gap is not tested.")
    elif overlap:
        line += f"; its 95% CI overlaps that of the next, {second}: the ranking of the two is not resolved."
    else:
        line += f"; its 95% CI does not overlap that of the next, {second}."
    return [line]


def comparison_lines(pairs: list[dict[str, Any]]) -> list[str]:
    lines, tied = [], []
    tests = sum(c["tested"] for c in pairs)
    for c in pairs:
        if not c["tested"]:
            continue
        if c["a_better"] or c["b_better"]:
            wins = [(c["a"], c["b"], c["a_better"]), (c["b"], c["a"], c["b_better"])]
            said = [f"{x} beats {y} at {k} of {c['tested']}" for x, y, k in wins if k]
            rest = c["tested"] - c["a_better"] - c["b_better"]
            lines.append(f"- Paired tests: {' and '.join(said)} preferences (p<0.05)"
                         + (f"; no significant difference at the other {rest}." if rest else "."))
        else:
            tied.append(f"{c['a']} vs {c['b']} ({c['tested']})")
    if tied:
        lines.append("- No significant difference (p≥0.05) at any tested preference: "
                     + ", ".join(tied) + ".")
    if tests:
        lines.append(f"- These are {tests} uncorrected tests at p<0.05: about {0.05 * tests:.1f} "
                     "of them would come out significant by chance alone.")
    return lines


def following_lines(rows: list[dict[str, Any]]) -> list[str]:
    known = sorted((r for r in rows if r["ray_angle"] is not None), key=lambda r: r["ray_angle"])
    if len(known) < 2:
        return []
    first, last = known[0], known[-1]
    return [f"- Preference following: {first['method']} puts its gains over chance closest to the "
            f"proportions asked for (mean ray angle {first['ray_angle']:.1f}°), "
            f"{last['method']} furthest ({last['ray_angle']:.1f}°); means over points, not tested."]


def cost_lines(rows: list[dict[str, Any]], zoo: dict[str, Any]) -> list[str]:
    costed = [r for r in rows if r["cost"]["wall_s"]]
    if not costed:
        return []
    best = max(rows, key=lambda r: r["hypervolume"])
    cheapest = min(costed, key=lambda r: r["cost"]["wall_s"])
    lines = []
    if best["cost"]["wall_s"] and best is not cheapest:
        ratio = best["cost"]["wall_s"] / cheapest["cost"]["wall_s"]
        lines.append(f"- Cost: {best['method']} (highest hypervolume) takes {ratio:.1f}× the wall "
                     f"time per point of the cheapest, {cheapest['method']} "
                     f"({seconds(best['cost']['wall_s'])} s vs {seconds(cheapest['cost']['wall_s'])} s).")
    elif best is cheapest:
        lines.append(f"- Cost: {best['method']} is also the cheapest per point "
                     f"({seconds(best['cost']['wall_s'])} s wall).")
    if zoo.get("total_s"):
        lines.append(f"- The zoo's one-off fine-tuning ({seconds(zoo['total_s'])} s) is shared by "
                     "every method and not counted above.")
    return lines


def budget_lines(curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = []
    for name, rows in curves.items():
        top = max(rows, key=lambda r: r["hypervolume"])
        lines.append(f"- Budget, {name}: hypervolume {rows[0]['hypervolume']:.4f} at "
                     f"{rows[0]['value']} steps, {rows[-1]['hypervolume']:.4f} at {rows[-1]['value']}; "
                     f"highest at {top['value']} steps.")
    return lines


def summary_lines(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], zoo: dict[str, Any],
                  curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    return (hypervolume_lines(rows) + comparison_lines(pairs) + following_lines(rows)
            + cost_lines(rows, zoo) + budget_lines(curves))
