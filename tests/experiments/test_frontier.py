"""The frontier report: measured points only, budgets every seed reaches, n per cell, paired Holm verdicts."""

import re

import pytest

from currydpo.experiments.frontier import (
    MARK,
    Point,
    at_kl,
    attainable,
    budget_grid,
    frontier_markdown,
    frontier_sections,
    holm,
    write_frontier,
)


def result(arm, value, seed, trajectory, final=None):
    """One (arm, value, seed) result; ``trajectory``: [(update, kl, reward)], the last is the final model."""
    u, kl, reward = final or trajectory[-1]
    return {"arm": f"{arm}@{value}", "seed": seed, "sweep": {"arm": arm, "key": "optim.lr", "value": value},
            "metrics": {"kl": kl, "judge_score": reward},
            "fairness": {"updates": u, "reference": "initial", "passes": "1.5"},
            "trajectory": [{"update": u, "kl": kl, "judge_score": r} for u, kl, r in trajectory]}


def chord(points, kl):
    """The old statistic: a straight line through the arm's final points (sorted by KL) at ``kl``."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= kl <= x1:
            return y0 + (y1 - y0) * (kl - x0) / (x1 - x0)


# "dense": its high-lr run climbs to 0.66 at KL 2, then over-optimises to KL 12; "sparse" ends at KL 2.5.
DENSE = {2e-5: [(50, 0.2, 0.45), (100, 0.3, 0.50)],
         2e-4: [(50, 0.8, 0.60), (100, 1.5, 0.65), (150, 2.0, 0.66), (200, 12.0, 0.50)]}
SPARSE = {2e-5: [(50, 0.3, 0.50), (100, 0.5, 0.55)],
          2e-4: [(50, 1.0, 0.56), (100, 1.6, 0.57), (150, 2.5, 0.58)]}


def synthetic(seeds=(1, 2, 3), drop=None):
    out = []
    for arm, runs in (("single-pair", SPARSE), ("dense", DENSE)):
        for value, traj in runs.items():
            for s in seeds:
                pts = [(u, kl * (1 + 0.01 * s), r + 0.002 * s) for u, kl, r in traj]
                if drop and drop(arm, value, s):
                    pts = pts[-1:]
                out.append(result(arm, value, s, pts))
    return out


def test_chord_interpolation_reverses_two_arms_that_the_measured_points_order():
    results = synthetic(seeds=(1,))
    finals = {arm: [(r["metrics"]["kl"], r["metrics"]["judge_score"]) for r in results if r["sweep"]["arm"] == arm]
              for arm in ("single-pair", "dense")}
    # the old way: at KL 2 the chord from dense's (0.3, 0.50) to (12, 0.50) says 0.50, below sparse's 0.57
    assert chord(finals["dense"], 2.0) < chord(finals["single-pair"], 2.0)
    # measured: dense reached 0.66 within KL <= 2.02, single-pair at most 0.572 within that budget
    points = {arm: [Point(p["kl"], p["judge_score"], r["sweep"]["value"], p["update"])
                    for r in results if r["sweep"]["arm"] == arm for p in r["trajectory"]] for arm in finals}
    assert attainable(points["dense"], 2.1) > attainable(points["single-pair"], 2.1)
    md = frontier_markdown(synthetic())
    row = next(line for line in md.splitlines() if line.startswith("| dense |"))
    assert "**ahead**" in row and "**behind**" not in row


def test_budgets_are_reached_by_every_seed_and_a_missing_seed_is_marked():
    arms = {"a": {1: [Point(0.3, 0.5, 1, 1), Point(3.0, 0.6, 1, 2)], 2: [Point(0.6, 0.5, 1, 1)]},
            "b": {1: [Point(0.1, 0.4, 1, 1)], 2: [Point(0.15, 0.4, 1, 1), Point(8.0, 0.1, 1, 2)]}}
    grid = budget_grid(arms)
    assert grid[0] >= 0.6 and grid == [1.0, 2.0]  # every seed has a point at or below; up to b's reach... a's 3.0
    # seed 2 of "dense" has only its final point in the 2e-4 run: not measured at matched KL, so its cells are marked
    md = frontier_markdown(synthetic(drop=lambda arm, value, s: arm == "dense" and s == 2))
    cells = re.findall(r"\(n=(\d)( †)?\)", md)
    assert cells and all(n == "3" or mark == f" {MARK}" for n, mark in cells)  # no seed vanishes unmarked
    assert any(mark for _, mark in cells)


def test_matched_kl_interpolates_only_between_close_neighbours_of_one_run():
    run = [Point(0.5, 0.50, "x", 1), Point(0.9, 0.60, "x", 2), Point(9.0, 0.20, "x", 3)]
    assert at_kl(run, 0.7) == pytest.approx(0.55)  # 0.9 / 0.5 < 2: interpolated
    assert at_kl(run, 3.0) is None  # 9.0 / 0.9 = 10: not measured, no chord
    other = [Point(2.5, 0.7, "y", 1), Point(3.5, 0.72, "y", 2)]
    assert at_kl(run + other, 3.0) == pytest.approx(0.71)  # the envelope over runs: y brackets it closely


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_pairing_by_seed_finds_a_consistent_gain_that_unpaired_intervals_miss():
    """Seeds differ a lot (0.3 .. 0.7), the arm is 0.05 above the reference on each: paired, it is ahead."""
    results = []
    for s, base in ((1, 0.3), (2, 0.5), (3, 0.7)):
        for arm, gain in (("single-pair", 0.0), ("curry", 0.05 + 0.001 * s)):
            results.append(result(arm, 1e-4, s, [(10, 0.4, base + gain), (20, 0.9, base + gain + 0.01)]))
    md = frontier_markdown(results)
    row = next(line for line in md.splitlines() if line.startswith("| curry |"))
    assert "**ahead**" in row and "n=3" in row
    summary = frontier_sections(results)["summary"]  # the README's compact form of the same table
    assert summary.startswith("| arm (n = 3 seeds in every cell) |") and "(+0.05" in summary and ", ahead)" in summary


def test_one_seed_gets_no_test(tmp_path):
    md, plots = write_frontier(str(tmp_path), synthetic(seeds=(1,)))
    assert "one seed: no test" in md and ": **ahead**" not in md
    assert (tmp_path / "frontier.md").read_text() == md and (tmp_path / "frontier.png").exists()


def test_default_budget_rule_and_no_sweep_no_frontier(tmp_path):
    md = frontier_markdown(synthetic())
    assert "(`optim.lr` = 0.0002) is where `single-pair`'s final models peak" in md
    assert "| single-pair | 0.0002 |" in md and "| 1.5 |" in md  # final models with passes per stage
    plain = [{**result("a", 1, 1, [(1, 0.5, 0.5)]), "arm": "a"}]
    plain[0].pop("sweep")
    assert write_frontier(str(tmp_path / "x"), plain) == ("", [])
