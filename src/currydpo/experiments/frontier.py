"""The reward–KL frontier of a swept comparison (`compare` with ``sweep:``): frontier.md and frontier.png.

Direct alignment methods over-optimise (Rafailov et al. 2024, arXiv 2406.02900): past some KL budget from
the initial model, gold quality falls. One setting per arm compares how far each arm drifted, not the
methods, so the DPO paper (arXiv 2305.18290, Fig. 2) compares frontiers. A verdict needs measurements that
reach it, so this report draws no straight lines across KL gaps:

- **Measured points.** Each (arm, swept value, seed) contributes every point it was evaluated at: its
  trajectory (``eval.points``, `trajectory.py`) or, without one, its final model.
- **Reward attainable within a KL budget k** (the headline statistic): per seed, the best reward among all of
  the arm's measured points (every swept value, every trajectory point) whose KL <= k. A k enters the grid only
  when every seed of every arm has a point at or below it, so no cell rests on fewer seeds than its arm ran.
- **Paired verdicts.** Every arm runs the same seeds, so each arm is compared with the reference arm by the
  per-seed difference (t-interval, two-sided paired t-test); "ahead"/"behind" only where the Holm-adjusted
  p-value across all the table's cells is below 0.05, "level" otherwise.
- **Reward at matched KL** (secondary): interpolated only between neighbouring points of one trajectory whose
  KLs lie within a factor of 2 of each other; elsewhere the seed is "not measured" and a cell with fewer seeds
  than its arm ran is marked.

The default-budget rule, fixed before any result is read (ours): the default budget is the swept value at which
the *reference arm* (``single-pair`` where present, else the first swept arm) has its highest mean final reward.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass

from scipy import stats

from ..evaluation.winrate import mean_ci
from ..io import save_figure, write_text

REFERENCE_ARM = "single-pair"
ALPHA = 0.05  # family-wise error rate of the verdicts (Holm)
GRID = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # candidate KL budgets, nats per answer
MAX_COLUMNS = 6
MAX_KL_RATIO = 2.0  # interpolate only between neighbouring points of one trajectory this close in KL
MARK = "†"  # a cell with fewer seeds than its arm ran


@dataclass(frozen=True)
class Point:
    """One measured evaluation of one seed of an arm."""

    kl: float
    reward: float
    value: object  # the swept value of the run it was measured on
    update: int


def reward_key(results: list[dict]) -> tuple[str, str]:
    """Gold reward where a gold judge ran; without one, held-out reward accuracy."""
    if any("judge_score" in r.get("metrics", {}) for r in results):
        return "judge_score", "gold reward"
    return "reward_accuracy", "held-out reward accuracy"


def _final_reward(metrics: dict, key: str) -> float | None:
    if key == "reward_accuracy":
        return (metrics.get("preference") or {}).get("rewards/accuracies")
    return metrics.get(key)


def seed_points(result: dict, key: str) -> list[Point]:
    """The points one (arm, value, seed) measured: its trajectory, or its final model."""
    value = result["sweep"]["value"]
    if result.get("trajectory"):
        return [Point(p["kl"], p[key], value, p["update"]) for p in result["trajectory"]
                if p.get("kl") is not None and p.get(key) is not None]
    m = result.get("metrics", {})
    reward = _final_reward(m, key)
    if m.get("kl") is None or reward is None:
        return []
    return [Point(m["kl"], reward, value, (result.get("fairness") or {}).get("updates", 0))]


def arm_points(results: list[dict], key: str) -> dict[str, dict[int, list[Point]]]:
    """arm -> seed -> every point it measured (all swept values), for the swept arms."""
    out: dict[str, dict[int, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.get("sweep"):
            out[r["sweep"]["arm"]][r["seed"]].extend(seed_points(r, key))
    return {arm: {s: pts for s, pts in seeds.items() if pts} for arm, seeds in out.items()}


def attainable(points: list[Point], budget: float) -> float | None:
    """The best reward among ``points`` whose KL <= ``budget`` (None: nothing measured within it)."""
    within = [p.reward for p in points if p.kl <= budget]
    return max(within) if within else None


def budget_grid(arms: dict[str, dict[int, list[Point]]]) -> list[float]:
    """The KL budgets every seed of every arm reaches (a point at or below), up to where the arms stop measuring
    (the smallest arm-wide largest KL): at most MAX_COLUMNS values of GRID."""
    seeds = [pts for per_seed in arms.values() for pts in per_seed.values()]
    if not seeds:
        return []
    low = max(min(p.kl for p in pts) for pts in seeds)
    high = min(max(p.kl for pts in per_seed.values() for p in pts) for per_seed in arms.values())
    grid = [k for k in GRID if low <= k <= max(high, low)]
    if not grid:
        grid = [next((k for k in GRID if k >= low), GRID[-1])]
    if len(grid) > MAX_COLUMNS:  # evenly thinned, the smallest and largest budgets kept
        grid = [grid[round(i * (len(grid) - 1) / (MAX_COLUMNS - 1))] for i in range(MAX_COLUMNS)]
    return grid


def at_kl(points: list[Point], kl: float) -> float | None:
    """Reward at ``kl`` on the upper envelope of this seed's trajectories: interpolated between neighbouring points
    of one run whose KLs are within MAX_KL_RATIO of each other; None (not measured) where no such pair brackets it."""
    runs: dict[object, list[Point]] = defaultdict(list)
    for p in points:
        runs[p.value].append(p)
    found = []
    for run in runs.values():
        run = sorted(run, key=lambda p: p.update)
        found += [p.reward for p in run if p.kl == kl]
        for a, b in zip(run, run[1:]):
            lo, hi = sorted((a, b), key=lambda p: p.kl)
            if lo.kl < kl < hi.kl and lo.kl > 0 and hi.kl / lo.kl <= MAX_KL_RATIO:
                found.append(lo.reward + (hi.reward - lo.reward) * (kl - lo.kl) / (hi.kl - lo.kl))
    return max(found) if found else None


@dataclass
class Cell:
    """One arm at one KL budget: per-seed values, and the paired difference against the reference arm."""

    values: dict[int, float]  # seed -> value
    seeds_run: int  # how many seeds the arm ran
    diff: dict | None = None  # {"mean", "ci_low", "ci_high", "p", "n"} vs the reference arm
    verdict: str = ""

    @property
    def n(self) -> int:
        return len(self.values)


def paired(cell: Cell, ref: Cell) -> dict | None:
    """Mean per-seed difference ``cell - ref`` over their common seeds, its 95% t-interval and two-sided p."""
    common = sorted(set(cell.values) & set(ref.values))
    d = [cell.values[s] - ref.values[s] for s in common]
    if len(d) < 2:
        return {"mean": d[0], "ci_low": d[0], "ci_high": d[0], "p": None, "n": 1} if d else None
    m, lo, hi = mean_ci(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    if sd == 0:
        p = 1.0 if m == 0 else 0.0  # identical differences: no spread to test against
    else:
        p = float(2 * stats.t.sf(abs(m) / (sd / math.sqrt(len(d))), len(d) - 1))
    return {"mean": m, "ci_low": lo, "ci_high": hi, "p": p, "n": len(d)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979): family-wise error controlled across all cells."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def cells_at(arms: dict[str, dict[int, list[Point]]], budgets: list[float], statistic) -> dict[str, list[Cell]]:
    """arm -> one `Cell` per budget of ``statistic(points, k)`` per seed (seeds without a value are left out)."""
    out = {}
    for arm, per_seed in arms.items():
        out[arm] = []
        for k in budgets:
            values = {s: v for s, pts in per_seed.items() if (v := statistic(pts, k)) is not None}
            out[arm].append(Cell(values, len(per_seed)))
    return out


def judge_cells(table: dict[str, list[Cell]], ref_arm: str) -> int:
    """Paired differences against ``ref_arm`` and Holm-adjusted verdicts for every other arm's cells; returns how
    many tests the family held."""
    tested = []
    for arm, cells in table.items():
        if arm == ref_arm:
            continue
        for cell, ref in zip(cells, table[ref_arm]):
            cell.diff = paired(cell, ref)
            if cell.diff and cell.diff["p"] is not None:
                tested.append(cell)
            elif cell.diff:
                cell.verdict = "one seed: no test"
    for cell, p in zip(tested, holm([c.diff["p"] for c in tested])):
        cell.diff["p_holm"] = p
        cell.verdict = ("ahead" if cell.diff["mean"] > 0 else "behind") if p < ALPHA else "level"
    return len(tested)


def _value(cell: Cell, digits: int = 3) -> str:
    if not cell.values:
        return "not measured"
    m, lo, hi = mean_ci(list(cell.values.values()))
    text = f"{m:.{digits}f}" + (f" ± {(hi - lo) / 2:.{digits}f}" if hi > lo else "")
    mark = f" {MARK}" if cell.n < cell.seeds_run else ""
    return f"{text} (n={cell.n}{mark})"


def _verdict(cell: Cell) -> str:
    if not cell.diff:
        return ""
    d = cell.diff
    if d["p"] is None:
        return f"; {d['mean']:+.3f}, one seed: no test"
    return f"; {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], p_Holm {d['p_holm']:.2g}: **{cell.verdict}**"


def _table(table: dict[str, list[Cell]], budgets: list[float], label: str, ref_arm: str) -> list[str]:
    lines = ["| arm | " + " | ".join(f"{label} within KL ≤ {k:g}" for k in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for arm, cells in table.items():
        lines.append(f"| {arm} | " + " | ".join(_value(c) + ("" if arm == ref_arm else _verdict(c)) for c in cells)
                     + " |")
    return lines


def _summary(table: dict[str, list[Cell]], budgets: list[float], label: str, ref_arm: str) -> str:
    """The budget table, compact: mean per cell; beside each other arm its paired difference and verdict."""
    n = {c.n for cells in table.values() for c in cells} | {c.seeds_run for cells in table.values() for c in cells}
    seeds = f"n = {n.pop()} seeds in every cell" if len(n) == 1 else "n varies: see frontier.md"
    lines = [f"| arm ({seeds}) | " + " | ".join(f"KL ≤ {k:g}" for k in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for arm, cells in table.items():
        parts = []
        for c in cells:
            if not c.values:
                parts.append("not measured")
                continue
            mean = sum(c.values.values()) / c.n
            verdict = "" if arm == ref_arm or not c.diff else (
                f" ({c.diff['mean']:+.3f}, {c.verdict})" if c.diff["p"] is not None else f" ({c.diff['mean']:+.3f})")
            parts.append(f"{mean:.3f}{verdict}")
        lines.append(f"| {arm} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def final_rows(results: list[dict], key: str) -> dict[str, list[dict]]:
    """arm -> one row per swept value: the final model's reward and KL over seeds, with passes per stage."""
    out: dict[str, dict[object, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.get("sweep"):
            out[r["sweep"]["arm"]][r["sweep"]["value"]].append(r)
    rows = {}
    for arm, by_value in out.items():
        rows[arm] = []
        for value, rs in by_value.items():
            rewards = [v for r in rs if (v := _final_reward(r["metrics"], key)) is not None]
            kls = [r["metrics"]["kl"] for r in rs if r["metrics"].get("kl") is not None]
            rows[arm].append({"value": value, "reward": mean_ci(rewards) if rewards else None,
                              "kl": mean_ci(kls) if kls else None, "n": len(rs),
                              "updates": (rs[0].get("fairness") or {}).get("updates", "–"),
                              "passes": (rs[0].get("fairness") or {}).get("passes", "–")})
    return rows


def _ci(c, digits: int = 3) -> str:
    if not c:
        return "–"
    m, lo, hi = c
    return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}" if hi > lo else f"{m:.{digits}f}"


def frontier_sections(results: list[dict]) -> dict[str, str]:
    """The report's parts (markdown): ``head``, ``budget`` (best reward within each KL budget, paired verdicts),
    ``matched`` (reward at matched KL, local interpolation) and ``finals`` (final models per swept value);
    {} when no arm was swept. README blocks embed them (`regenerate.block`)."""
    key, label = reward_key(results)
    arms = arm_points(results, key)
    if not arms:
        return {}
    swept = next(r for r in results if r.get("sweep"))["sweep"]["key"]
    ref_arm = REFERENCE_ARM if REFERENCE_ARM in arms else next(iter(arms))
    finals = final_rows(results, key)
    ref_best = max((r for r in finals[ref_arm] if r["reward"]), key=lambda r: r["reward"][0])["value"]
    n_points = {len(r.get("trajectory") or [None]) for r in results if r.get("sweep")}
    seeds = sorted({s for per_seed in arms.values() for s in per_seed})
    head = [f"## Reward–KL frontier ({label} against KL to the initial model; sweep of `{swept}`)", "",
            f"Seeds {', '.join(map(str, seeds))}; each run evaluated at {'/'.join(map(str, sorted(n_points)))} "
            "point(s) along its training (the last is the final model). Reference arm for the paired verdicts: "
            f"`{ref_arm}`."]
    budgets = budget_grid(arms)
    within = cells_at(arms, budgets, attainable)
    tests = judge_cells(within, ref_arm)
    budget = [f"### Best {label} measured within a KL budget", "",
              f"Per seed, the best {label} among all of the arm's measured points (every `{swept}`, every point along "
              "each run) with KL to the initial model ≤ k; mean ± 95% t-CI over seeds and n. A budget k enters the "
              "table only when every seed of every arm has a point at or below it. Beside each arm: its paired "
              f"per-seed difference from `{ref_arm}` [95% t-CI] and the two-sided paired t-test's p-value, "
              f"Holm-adjusted across the {tests} tests of this table; **ahead**/**behind** only where p_Holm < "
              f"{ALPHA:g}, **level** otherwise. These are maxima over each arm's measured points: an arm with more "
              "points within a budget has more chances to reach a high value.", ""]
    budget += _table(within, budgets, label, ref_arm) if budgets else ["No KL budget is reached by every seed of "
                                                                       "every arm: widen the sweep."]
    matched = cells_at(arms, budgets, at_kl)
    judge_cells(matched, ref_arm)
    at = [f"### {label.capitalize()} at matched KL (local interpolation only)", "",
          f"Per seed, the {label} at KL = k on the upper envelope of its runs, interpolated only between "
          f"neighbouring points of one run whose KLs are within a factor of {MAX_KL_RATIO:g}; elsewhere the seed "
          f"is not measured at k. {MARK}: fewer seeds than the arm ran. Verdicts as above (Holm within this "
          "table).", ""]
    at += [line.replace("within KL ≤", "at KL =") for line in _table(matched, budgets, label, ref_arm)]
    final = [f"### Final models per `{swept}`", "",
             f"The default budget (`{swept}` = {ref_best}) is where `{ref_arm}`'s final models peak: the rule fixed "
             "before the results were read.", "",
             f"| arm | {swept} | {label} | KL to the initial model | seeds | updates | passes per stage |",
             "|---|---|---|---|---|---|---|"]
    for arm, rows in finals.items():
        for r in rows:
            final.append(f"| {arm} | {r['value']} | {_ci(r['reward'])} | {_ci(r['kl'], 2)} | {r['n']} | "
                         f"{r['updates']} | {r['passes']} |")
    sections = {name: "\n".join(lines) + "\n" for name, lines in
                (("head", head), ("budget", budget), ("matched", at), ("finals", final))}
    # the tables alone, for the README (their explanation is in frontier.md and docs/results.md)
    sections["budget-table"] = "\n".join(line for line in budget if line.startswith("|")) + "\n"
    sections["summary"] = _summary(within, budgets, label, ref_arm)
    sections["matched-table"] = "\n".join(line for line in at if line.startswith("|")) + "\n"
    return sections


def frontier_markdown(results: list[dict]) -> str:
    sections = frontier_sections(results)
    return "\n".join(sections[name] for name in ("head", "budget", "matched", "finals")) if sections else ""


def frontier_plot(output_dir: str, results: list[dict]) -> str | None:
    """Left: every run's measured points along its training (mean over seeds), one line per (arm, swept value).
    Right: the best reward measured within each KL budget (mean over seeds, 95% t-CI) — a step curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = reward_key(results)
    arms = arm_points(results, key)
    if not arms:
        return None
    sft = [_final_reward(r["metrics"], key) for r in results if r["arm"] == "sft"]
    sft = [v for v in sft if v is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    markers = "osD^vP*Xph<>"
    all_kl = sorted({max(p.kl, 0.0) for per_seed in arms.values() for pts in per_seed.values() for p in pts})
    budgets = [k for k in all_kl if k > 0]
    for i, (arm, per_seed) in enumerate(arms.items()):
        color, marker = plt.cm.tab10(i % 10), markers[i % len(markers)]
        curves = defaultdict(lambda: defaultdict(list))  # value -> update -> [(kl, reward)] over seeds
        for pts in per_seed.values():
            for p in pts:
                curves[p.value][p.update].append((p.kl, p.reward))
        for j, (value, by_update) in enumerate(curves.items()):
            xs = [sum(kl for kl, _ in v) / len(v) for _, v in sorted(by_update.items())]
            ys = [sum(r for _, r in v) / len(v) for _, v in sorted(by_update.items())]
            left.plot(xs, ys, color=color, marker=marker, ms=3, lw=1, ls="-" if j == 0 else "--",
                      label=f"{arm} @ {value}")
        means, lows, highs, ks = [], [], [], []
        for k in budgets:
            vals = [v for pts in per_seed.values() if (v := attainable(pts, k)) is not None]
            if len(vals) == len(per_seed):  # every seed reached the budget
                m, lo, hi = mean_ci(vals)
                ks.append(k)
                means.append(m)
                lows.append(lo)
                highs.append(hi)
        if ks:
            right.step(ks, means, where="post", color=color, label=arm)
            right.fill_between(ks, lows, highs, step="post", color=color, alpha=0.12)
    for ax in (left, right):
        if sft:
            ax.axhline(sum(sft) / len(sft), color="grey", lw=0.8, ls="--", label="sft")
        # KLs span 0.01 to tens of nats: log-like above 0.1 so the small budgets are not crushed together
        ax.set_xscale("symlog", linthresh=0.1, linscale=0.5)
        ax.set_xlim(left=0)
        ax.set_ylabel(label)
    left.set_xlabel("KL(policy || initial model), nats per answer (symlog)")
    left.set_title("measured points along each run (mean over seeds)", fontsize=10)
    left.legend(fontsize=6, ncol=2)
    right.set_xlabel("KL budget k (symlog)")
    right.set_title(f"best {label} measured within KL ≤ k (mean, 95% CI; all seeds)", fontsize=10)
    right.legend(fontsize=7)
    path = os.path.join(output_dir, "frontier.png")
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_frontier(output_dir: str, results: list[dict]) -> tuple[str, list[str]]:
    """frontier.md and frontier.png when any arm was swept: (its markdown, the plot paths); ("", []) otherwise."""
    md = frontier_markdown(results)
    if not md:
        return "", []
    write_text(os.path.join(output_dir, "frontier.md"), md)
    plot = frontier_plot(output_dir, results)
    return md, [plot] if plot else []
