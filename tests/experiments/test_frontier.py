"""The frontier report: interpolation at matched KL per seed, the default-budget rule, the envelope."""

import pytest

from currydpo.experiments.frontier import at_kl, frontier_markdown, matched_kl, write_frontier
from currydpo.experiments.report import aggregate


def result(arm, value, seed, kl, reward):
    return {"arm": f"{arm}@{value}", "seed": seed, "sweep": {"arm": arm, "key": "optim.lr", "value": value},
            "metrics": {"kl": kl, "judge_score": reward}, "fairness": {"updates": 1, "reference": "initial"}}


# single-pair peaks at lr 6e-05; curry lies 0.05 above it at every KL of the shared span
POINTS = {"single-pair": [(2e-5, 0.1, 0.40), (6e-5, 1.0, 0.50), (2e-4, 4.0, 0.30)],
          "curry": [(2e-5, 0.2, 0.45), (6e-5, 2.0, 0.60), (2e-4, 3.0, 0.45)]}


def rows():
    results = [result(arm, v, seed, kl * (1 + 0.01 * seed), r + 0.001 * seed)
               for arm, pts in POINTS.items() for v, kl, r in pts for seed in (1, 2)]
    return aggregate(results, list(dict.fromkeys(r["arm"] for r in results)))


def test_reward_at_matched_kl_interpolates_each_seed_along_its_arm():
    rs = [r for r in rows() if r["sweep"]["arm"] == "single-pair"]
    got = at_kl(rs, "judge_score", 2.0)
    # seed 1: KLs 0.101, 1.01, 4.04 -> between (1.01, 0.501) and (4.04, 0.301)
    s1 = 0.501 + (0.301 - 0.501) * (2.0 - 1.01) / (4.04 - 1.01)
    s2 = 0.502 + (0.302 - 0.502) * (2.0 - 1.02) / (4.08 - 1.02)
    assert got["values"] == pytest.approx([s1, s2])
    assert at_kl(rs, "judge_score", 9.0) is None  # outside the arm's span: no extrapolation


def test_matched_kl_lies_inside_every_arms_span_and_the_report_names_the_envelope(tmp_path):
    series_rows = rows()
    series = {}
    for r in series_rows:
        series.setdefault(r["sweep"]["arm"], []).append(r)
    kls = matched_kl(series)
    assert len(kls) == 3 and all(0.2 * 1.015 <= k <= 3.0 * 1.015 for k in kls)
    md = frontier_markdown(series_rows)
    assert "`optim.lr` = 6e-05: where `single-pair` peaks" in md  # the default-budget rule
    assert "**curry**" in md and "**single-pair**" not in md
    md2, plots = write_frontier(str(tmp_path), series_rows)
    assert md2 == md and (tmp_path / "frontier.md").read_text() == md and (tmp_path / "frontier.png").exists()


def test_no_sweep_no_frontier(tmp_path):
    plain = aggregate([{**result("a", 1, 1, 0.5, 0.5), "arm": "a"}], ["a"])
    plain[0].pop("sweep")
    assert write_frontier(str(tmp_path), plain) == ("", []) and not (tmp_path / "frontier.md").exists()


def test_one_seed_claims_no_level_or_below():
    results = [result(arm, v, 1, kl, r) for arm, pts in POINTS.items() for v, kl, r in pts]
    md = frontier_markdown(aggregate(results, list(dict.fromkeys(r["arm"] for r in results))))
    assert "(one seed: no CI, the order of means only" in md and "below its CI" not in md
