"""Adjusted win rates, bootstrap confidence intervals and mean ± CI over seeds.

The Curry-DPO paper (arXiv 2403.07230, section 5) reports *adjusted win rates* of a
candidate against a baseline: ``(wins + ties / 2) / N``, every comparison judged in
both response orders (the judges in `judges.py` do that). An *outcome* here is one
float per prompt: 1 = candidate wins, 0 = baseline wins, 0.5 = tie.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import CurryError
from .judges import outcomes_from_scores, prompt_texts


def adjusted_win_rate(outcomes: Sequence[float]) -> float:
    """``(wins + ties/2) / N`` = the mean outcome (1 win, 0.5 tie, 0 loss)."""
    if len(outcomes) == 0:
        raise CurryError("adjusted win rate of zero comparisons is undefined; pass at least one outcome")
    for o in outcomes:
        if not 0.0 <= float(o) <= 1.0:
            raise CurryError(f"win-rate outcome {o!r} is outside [0, 1]; use 1 = win, 0.5 = tie, 0 = loss")
    return float(sum(float(o) for o in outcomes) / len(outcomes))


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                 stat: Callable[[np.ndarray], float] = np.mean) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of ``stat(values)`` (`scipy.stats.bootstrap`,
    seeded, so the interval is reproducible). Identical values give the point itself."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise CurryError(f"bootstrap_ci needs a non-empty 1-d sequence of numbers, got shape {x.shape}")
    if not 0.0 < alpha < 1.0:
        raise CurryError(f"bootstrap alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise CurryError(f"bootstrap n_boot must be >= 1, got {n_boot}")
    if np.all(x == x[0]):  # no spread: scipy would warn about degenerate data and return nan
        v = float(stat(x))
        return v, v
    vectorised = stat in (np.mean, np.median)
    res = stats.bootstrap((x,), (lambda s, axis=-1: stat(s, axis=axis)) if vectorised else stat,
                          vectorized=vectorised, n_resamples=n_boot, confidence_level=1 - alpha,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (p in (0.5, 1)), `scipy.stats.t`."""
    from scipy import stats

    if not 0.5 < p < 1.0:
        raise CurryError(f"t quantile needs p in (0.5, 1), got {p}")
    if int(df) < 1:
        raise CurryError(f"t quantile needs df >= 1, got {int(df)}")
    return float(stats.t.ppf(p, int(df)))


def mean_ci(values: Sequence[float], *, confidence: float = 0.95,
            bounds: tuple[float | None, float | None] = (None, None)) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: mean over seeds with a t-distribution interval (df = n - 1).

    One value gives ``(v, v, v)`` — no spread can be estimated from a single seed. ``bounds``
    is the metric's range (a win rate's (0, 1)): the interval is clipped to it, since with
    two seeds a t-interval easily reaches past it (-0.2 to 1.37) where no value can lie.
    """
    x = [float(v) for v in values]
    if not x:
        raise CurryError("mean_ci of no values; pass one value per seed")
    if not 0.0 < confidence < 1.0:
        raise CurryError(f"confidence must be in (0, 1), got {confidence}")
    n = len(x)
    m = sum(x) / n
    if n == 1:
        return m, m, m
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    lo, hi = m - half, m + half
    if bounds[0] is not None:
        lo = max(lo, bounds[0])
    if bounds[1] is not None:
        hi = min(hi, bounds[1])
    return m, lo, hi


def win_rate_report(judge: Any, prompts: Sequence[Any], candidate: Sequence[str], baseline: Sequence[str], *,
                    seed: int = 0, n_boot: int = 2000, alpha: float = 0.05) -> dict[str, Any]:
    """Judge ``candidate`` against ``baseline`` on ``prompts``; adjusted win rate with bootstrap CI.

    Comparisons the judge abstained on are left out of the rate and counted in ``abstained``
    (``n`` is the number judged); all abstained is an error. The percentile bootstrap of a
    mean of outcomes in [0, 1] stays in [0, 1].

    ``prompts`` are strings or `Prompt`s (their ``text`` is shown to the judge). For a
    pointwise judge (one with ``score``) the responses are scored once and the
    comparison is derived from the scores; the mean scores are reported too.
    """
    n = len(prompts)
    if not (len(candidate) == len(baseline) == n) or n == 0:
        raise CurryError(f"win rate needs equally many prompts, candidate and baseline responses (>0); got "
                         f"{n}, {len(candidate)}, {len(baseline)}")
    texts = prompt_texts(prompts)
    stats_before = dict(getattr(judge, "stats", None) or {})
    report: dict[str, Any] = {}
    if hasattr(judge, "score"):
        s_cand = [float(s) for s in judge.score(texts, list(candidate))]
        s_base = [float(s) for s in judge.score(texts, list(baseline))]
        outcomes = outcomes_from_scores(s_cand, s_base, getattr(judge, "tie_tolerance", 0.0))
        report["mean_score_candidate"] = float(np.mean(s_cand))
        report["mean_score_baseline"] = float(np.mean(s_base))
    else:
        outcomes = [None if o is None else float(o) for o in judge.compare(texts, list(candidate), list(baseline))]
    judged = [o for o in outcomes if o is not None]  # None: the judge abstained (no verdict), not a tie
    if not judged:
        raise CurryError(f"judge {getattr(judge, 'spec', judge)!r} gave no readable verdict on any of the {n} "
                         "comparisons; check the endpoint and model (its replies must end with [[A]], [[B]] or [[C]])")
    lo, hi = bootstrap_ci(judged, n_boot=n_boot, alpha=alpha, seed=seed)
    report = {
        "win_rate": adjusted_win_rate(judged), "ci_low": lo, "ci_high": hi,
        "wins": sum(o == 1.0 for o in judged), "ties": sum(o == 0.5 for o in judged),
        "losses": sum(o == 0.0 for o in judged), "abstained": n - len(judged), "n": len(judged), **report,
        "judge": getattr(judge, "spec", type(judge).__name__),
    }
    stats = getattr(judge, "stats", None)
    if stats:  # this call's share of the judge's counters (requests, cached, unparseable, ...)
        report["judge_stats"] = {k: v - stats_before.get(k, 0) for k, v in stats.items()}
    return report
