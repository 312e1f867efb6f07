"""Honest statistics in the comparison report: CIs inside the metric's range, n/a for undefined metrics,
negative KL estimates flagged as noise and left out of the reward-vs-KL plot."""

from currydpo.evaluation.winrate import mean_ci
from currydpo.experiments.report import aggregate, markdown, plots

FAIR = {"updates": 10, "schedule": "iterative", "reference": "previous-stage", "lr_schedule": "-",
        "optimizer_resets": 0}
SFT_FAIR = {"updates": 0, "schedule": "none (base model)", "reference": "-", "lr_schedule": "-",
            "optimizer_resets": 0}


def result(arm, seed, win, kl, pref_acc, fairness=FAIR):
    return {"arm": arm, "seed": seed, "fairness": fairness,
            "metrics": {"win_rate": {"win_rate": win, "ci_low": 0.0, "ci_high": 1.0}, "kl": kl, "judge_score": 0.5,
                        "preference": {"rewards/accuracies": pref_acc, "ranking_accuracy": 0.5, "n": 8}}}


def test_two_seed_win_rate_ci_is_clipped_to_0_1():
    _, lo, hi = mean_ci([0.2, 0.97])  # the unclipped t-interval is about -4.3 .. 5.5
    assert lo < 0 < 1 < hi
    assert mean_ci([0.2, 0.97], bounds=(0.0, 1.0))[1:] == (0.0, 1.0)
    rows = aggregate([result("curry", 1, 0.2, 0.5, 0.6), result("curry", 2, 0.97, 0.6, 0.7)], ["curry"])
    assert (rows[0]["win_rate"]["ci_low"], rows[0]["win_rate"]["ci_high"]) == (0.0, 1.0)
    assert "| curry | 0.500 | 0.585 [0.000, 1.000] |" in markdown(rows)


def test_sft_reward_accuracy_is_na_and_negative_kl_is_noise(tmp_path):
    results = [result("sft", 1, 0.5, 0.0, None, SFT_FAIR), result("curry", 1, 0.7, -0.02, 0.8),
               result("dpo", 1, 0.6, 0.3, 0.7)]
    rows = aggregate(results, ["sft", "curry", "dpo"])
    table = markdown(rows)
    sft = next(line for line in table.splitlines() if line.startswith("| sft |"))
    assert sft.split(" | ")[4] == "n/a"  # reward accuracy against itself: undefined, not 0.000
    assert "-0.020 (< 0: noise)" in next(line for line in table.splitlines() if line.startswith("| curry |"))
    paths = plots(str(tmp_path), rows, results)
    assert any(p.endswith("reward_vs_kl.png") for p in paths)
    import matplotlib.pyplot as plt  # the plot left curry's negative estimate out: only sft and dpo remain

    captured = {}
    real = plt.Axes.scatter

    def spy(self, x, y, *a, **k):
        captured.setdefault("x", []).append(x)
        return real(self, x, y, *a, **k)

    plt.Axes.scatter = spy
    try:
        plots(str(tmp_path), rows, results)
    finally:
        plt.Axes.scatter = real
    assert captured["x"] == [0.0, 0.3]
