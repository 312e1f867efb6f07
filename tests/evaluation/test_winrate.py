import numpy as np
import pytest

from currydpo.errors import CurryError
from currydpo.evaluation.judges import GoldJudge
from currydpo.evaluation.winrate import adjusted_win_rate, bootstrap_ci, mean_ci, t_quantile, win_rate_report


def test_adjusted_win_rate_by_hand():
    # 3 wins, 2 ties, 1 loss: (3 + 2/2) / 6
    assert adjusted_win_rate([1, 1, 1, 0.5, 0.5, 0]) == pytest.approx(4 / 6)
    assert adjusted_win_rate([0.5] * 4) == 0.5
    assert adjusted_win_rate([0, 0]) == 0.0
    with pytest.raises(CurryError):
        adjusted_win_rate([])
    with pytest.raises(CurryError, match="outside"):
        adjusted_win_rate([2.0])


def test_bootstrap_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 200, 2000):
        x = rng.choice([0.0, 0.5, 1.0], size=n, p=[0.3, 0.2, 0.5])
        lo, hi = bootstrap_ci(x, seed=0)
        assert lo <= x.mean() <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)  # reproducible
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    lo, hi = bootstrap_ci(x[:50], stat=np.median, n_boot=200)
    assert lo <= np.median(x[:50]) <= hi
    with pytest.raises(CurryError):
        bootstrap_ci([])


def test_t_quantile_matches_table():
    # two-sided 95% critical values from standard t tables
    for df, t in [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262), (10, 2.228),
                  (30, 2.042), (120, 1.980)]:
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-3)
    assert t_quantile(0.995, 4) == pytest.approx(4.604, abs=1e-3)
    assert t_quantile(0.975, 10**6) == pytest.approx(1.960, abs=1e-3)


def test_mean_ci_over_seeds():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, n = 3: half-width = 4.303 / sqrt(3)
    assert m == 2.0 and hi - m == pytest.approx(4.303 / 3 ** 0.5, abs=1e-3) and m - lo == pytest.approx(hi - m)
    assert mean_ci([0.7]) == (0.7, 0.7, 0.7)


def length(prompt, response):
    return float(len(response))


def test_win_rate_report_pointwise():
    judge = GoldJudge(length, "gold:test:length")
    rep = win_rate_report(judge, ["p"] * 4, ["aaa", "a", "aa", "aaaa"], ["a", "aaa", "bb", "b"], seed=0)
    assert (rep["wins"], rep["ties"], rep["losses"], rep["n"]) == (2, 1, 1, 4)
    assert rep["win_rate"] == pytest.approx(2.5 / 4)
    assert rep["ci_low"] <= rep["win_rate"] <= rep["ci_high"]
    assert rep["mean_score_candidate"] == pytest.approx(2.5) and rep["mean_score_baseline"] == pytest.approx(1.75)
    assert rep["judge"] == "gold:test:length"
    with pytest.raises(CurryError, match="equally many"):
        win_rate_report(judge, ["p"], ["a", "b"], ["c"])


def test_win_rate_report_pairwise_judge():
    class Pairwise:
        spec = "test:pairwise"

        def compare(self, prompts, a, b):
            return [1.0, 0.0, 0.5]

    rep = win_rate_report(Pairwise(), ["p"] * 3, ["a"] * 3, ["b"] * 3)
    assert rep["win_rate"] == 0.5 and "mean_score_candidate" not in rep
