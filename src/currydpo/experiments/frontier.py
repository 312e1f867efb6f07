"""The reward–KL frontier of a swept comparison (`compare` with ``sweep:``): frontier.md and frontier.png.

Direct alignment methods over-optimise (Rafailov et al. 2024, arXiv 2406.02900): past some KL
budget from the initial model, gold quality falls. One setting per arm compares how far each
arm drifted, not the methods, so the DPO paper (arXiv 2305.18290, Fig. 2) compares frontiers.
Here each arm is a line through its sweep points (mean over seeds, 95% t-CIs on both axes); the
table gives each arm's best point, its reward at matched KL (linear interpolation along the
arm's points, per seed, at KL values inside every arm's span) and the arm(s) on top.

The default-budget rule, fixed before any result is read (ours): the default budget is the
swept value at which the *reference arm* (``single-pair`` where present, else the first swept
arm) has its highest mean reward; every arm is reported at that value too.
"""

from __future__ import annotations

import os
from collections import defaultdict

from ..evaluation.winrate import mean_ci
from ..io import save_figure, write_text

REFERENCE_ARM = "single-pair"


def _reward_key(rows: list[dict]) -> tuple[str, str]:
    """Gold reward where a gold judge ran; without one, held-out reward accuracy."""
    if any("judge_score" in r for r in rows):
        return "judge_score", "gold reward"
    return "reward_accuracy", "held-out reward accuracy"


def _series(rows: list[dict], key: str) -> dict[str, list[dict]]:
    """arm -> its swept rows that have KL and ``key``, in the order of the swept values."""
    out = defaultdict(list)
    for r in rows:
        if r.get("sweep") and "kl" in r and key in r:
            out[r["sweep"]["arm"]].append(r)
    return dict(out)


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at ``x`` on the piecewise-linear curve through ``points`` sorted by x; None outside their span."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == x else None


def matched_kl(series: dict[str, list[dict]], n: int = 3) -> list[float]:
    """``n`` KL values inside every arm's span of mean KL (empty when the spans do not overlap)."""
    lo = max(min(r["kl"]["mean"] for r in rs) for rs in series.values())
    hi = min(max(r["kl"]["mean"] for r in rs) for rs in series.values())
    if not hi > lo:
        return []
    return [lo + (hi - lo) * (i + 1) / (n + 1) for i in range(n)]


def at_kl(rs: list[dict], key: str, kl: float) -> dict | None:
    """Reward at ``kl`` per seed (each seed's own points), then mean and CI over seeds."""
    seeds = sorted(set.intersection(*(set(r["seeds"]) for r in rs)))
    values = []
    for s in seeds:
        pts = [(r["kl"]["values"][r["seeds"].index(s)], r[key]["values"][r["seeds"].index(s)]) for r in rs
               if len(r["kl"]["values"]) == len(r["seeds"]) and len(r[key]["values"]) == len(r["seeds"])]
        y = _interpolate(pts, kl) if pts else None
        if y is not None:
            values.append(y)
    if not values:
        return None
    m, lo, hi = mean_ci(values)
    return {"mean": m, "ci_low": lo, "ci_high": hi, "values": values}


def _cell(c: dict | None, digits: int = 3) -> str:
    if not c:
        return "–"
    half = (c["ci_high"] - c["ci_low"]) / 2
    return f"{c['mean']:.{digits}f} ± {half:.{digits}f}" if half > 0 else f"{c['mean']:.{digits}f}"


def frontier_markdown(rows: list[dict]) -> str:
    key, label = _reward_key(rows)
    series = _series(rows, key)
    if not series:
        return ""
    swept = next(iter(series.values()))[0]["sweep"]["key"]
    ref_arm = REFERENCE_ARM if REFERENCE_ARM in series else next(iter(series))
    ref_best = max(series[ref_arm], key=lambda r: r[key]["mean"])["sweep"]["value"]
    lines = [f"## Reward–KL frontier ({label} against KL to the initial model, sweep of `{swept}`)", "",
             f"| arm | {swept} | {label} | win rate vs SFT | KL to SFT | seeds |", "|---|---|---|---|---|---|"]
    for arm, rs in series.items():
        for r in rs:
            lines.append(f"| {arm} | {r['sweep']['value']} | {_cell(r.get(key))} | {_cell(r.get('win_rate'))} | "
                         f"{_cell(r.get('kl'), 2)} | {len(r['seeds'])} |")
    kls = matched_kl(series)
    head = " | ".join(f"{label} at KL {k:.2f}" for k in kls)
    lines += ["", f"Each arm's best point, its value at the default budget (`{swept}` = {ref_best}: where "
              f"`{ref_arm}` peaks, the rule fixed before the results were read) and its {label} at matched KL "
              "(interpolated along the arm's sweep, per seed; 95% t-CI over seeds):", "",
              f"| arm | best {label} | at {swept} | KL there | at the default budget | " + (head + " |" if kls else ""),
              "|---|---|---|---|---|" + "---|" * len(kls)]
    matched = {}
    for arm, rs in series.items():
        best = max(rs, key=lambda r: r[key]["mean"])
        default = next((r for r in rs if str(r["sweep"]["value"]) == str(ref_best)), None)
        matched[arm] = [at_kl(rs, key, k) for k in kls]
        cells = [_cell(best[key]), str(best["sweep"]["value"]), _cell(best["kl"], 2), _cell(default and default[key]),
                 *map(_cell, matched[arm])]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if kls:
        lines += ["", "Upper envelope at each matched KL (the best mean; arms whose CI overlaps the best's are level "
                  "with it):", ""]
        for i, k in enumerate(kls):
            have = {a: m[i] for a, m in matched.items() if m[i]}
            if not have:
                continue
            top = max(have, key=lambda a: have[a]["mean"])
            if min(len(m["values"]) for m in have.values()) < 2:  # one seed: no CI, so no "level" or "below"
                lines.append(f"- KL {k:.2f}: **{top}** (one seed: no CI, the order of means only; run more seeds)")
                continue
            level = [a for a in have if a != top and have[a]["ci_high"] >= have[top]["ci_low"]]
            lines.append(f"- KL {k:.2f}: **{top}**" + (f"; level with it: {', '.join(level)}" if level else
                                                        "; every other arm below its CI"))
    else:
        lines += ["", "The arms' KL spans do not overlap: no matched-KL comparison is possible; widen the sweep."]
    return "\n".join(lines) + "\n"


def _errors(rs: list[dict], key: str) -> list[list[float]]:
    return [[r[key]["mean"] - r[key]["ci_low"] for r in rs], [r[key]["ci_high"] - r[key]["mean"] for r in rs]]


def frontier_plot(output_dir: str, rows: list[dict], baseline: dict | None = None) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = _reward_key(rows)
    series = _series(rows, key)
    if not series:
        return None
    panels = [(key, label)] + ([("win_rate", "adjusted win rate vs SFT")] if any("win_rate" in r for r in rows)
                               and key == "judge_score" else [])
    markers = "osD^vP*Xph<>"
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
    for ax, (k, name) in zip(axes[0], panels):
        for i, (arm, rs) in enumerate(series.items()):
            rs = sorted((r for r in rs if k in r), key=lambda r: r["kl"]["mean"])
            x = [r["kl"]["mean"] for r in rs]
            y = [r[k]["mean"] for r in rs]
            xerr, yerr = _errors(rs, "kl"), _errors(rs, k)
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=plt.cm.tab10(i % 10), marker=markers[i % len(markers)],
                        capsize=3, lw=1.2, label=arm)
        if baseline and k in baseline:
            ax.axhline(baseline[k]["mean"], color="grey", lw=0.8, ls="--", label="sft")
        # KLs span 0.1 to tens of nats: log-like above 0.1 so the small budgets are not crushed together
        ax.set_xscale("symlog", linthresh=0.1, linscale=0.5)
        ax.set_xlim(left=0)  # KL >= 0: a 3-seed t-interval reaching below 0 is drawn up to 0
        ax.set_xlabel("KL(policy || initial model), nats per answer (symlog)")
        ax.set_ylabel(name)
        ax.set_title(f"{name} vs KL (one point per swept value)")
    axes[0][0].legend(fontsize=7)
    path = os.path.join(output_dir, "frontier.png")
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_frontier(output_dir: str, rows: list[dict]) -> tuple[str, list[str]]:
    """frontier.md and frontier.png when any arm was swept: (its markdown, the plot paths); ("", []) otherwise."""
    md = frontier_markdown(rows)
    if not md:
        return "", []
    write_text(os.path.join(output_dir, "frontier.md"), md)
    plot = frontier_plot(output_dir, rows, next((r for r in rows if r["arm"] == "sft"), None))
    return md, [plot] if plot else []
