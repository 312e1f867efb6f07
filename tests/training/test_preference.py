import math

import pytest
import torch

from currydpo.training.preference import preference_metrics


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_hand_computed_metrics_and_buckets():
    # pair 0: policy prefers chosen, reward margin 0.1*((-1+3)-(-4+3)) = 0.3
    # pair 1: policy prefers rejected (-5 < -2) but reward margin 0.1*((-5+6)-(-2+1)) = 0.2 > 0
    m = preference_metrics(t(-1, -5), t(-4, -2), t(1, 10), t(4, 1), t(-3, -6), t(-3, -1), beta=0.1,
                           score_gaps=[2.0, None], buckets=[3, 2])
    assert m["rewards/accuracies"] == 1.0
    assert m["rewards/margins"] == pytest.approx((0.3 + 0.2) / 2)
    assert m["ranking_accuracy"] == 0.5
    # length-normalised: pair 0: -1/1 = -4/4 -> a tie, not correct; pair 1: -0.5 > -2
    assert m["ranking_accuracy_normalised"] == 0.5
    # idealised (only scored pair 0): ref_w - ref_l + gap/beta = 0 + 20 > 0
    assert m["idealised_ranking_accuracy"] == 1.0
    assert m["bucket=2/ranking_accuracy"] == 0.0 and m["bucket=3/ranking_accuracy"] == 1.0
    assert "bucket=2/idealised_ranking_accuracy" not in m
    assert m["n"] == 2 and m["bucket=3/n"] == 1


def test_ties_are_counted_apart_not_as_correct():
    m = preference_metrics(t(-2, -1, -3), t(-2, -4, -1), t(1, 1, 1), t(1, 1, 1), None, None, beta=0.1,
                           score_gaps=[None] * 3)
    assert m["ranking_accuracy"] == pytest.approx(1 / 3) and m["ranking_ties"] == pytest.approx(1 / 3)


def test_idealised_accuracy_fails_when_reference_strongly_disagrees():
    # ref prefers rejected by 50 nats; the score gap 1 / beta 0.1 = 10 cannot overcome it
    m = preference_metrics(t(0.0), t(0.0), t(1), t(1), t(-60), t(-10), beta=0.1, score_gaps=[1.0])
    assert m["idealised_ranking_accuracy"] == 0.0 and not math.isnan(m["rewards/margins"])


def test_without_reference_only_reference_free_metrics_with_the_model_as_its_own_reference():
    # pair 0 (bucket 3): chosen -1 vs -4: ranked right; idealised (-1 - -4) + 2.0/0.1 = 23 > 0
    # pair 1 (bucket 2): chosen -5 vs -2: ranked wrong; normalised -0.5 >= -2 right; idealised -3 + 0.5/0.1 = 2 > 0
    # pair 2 (bucket 2): chosen -9 vs -3: wrong; normalised -9/3 = -3 < -3/6 = -0.5 wrong; idealised -6 + 1 < 0
    m = preference_metrics(t(-1, -5, -9), t(-4, -2, -3), t(1, 10, 3), t(4, 1, 6), None, None, beta=0.1,
                           score_gaps=[2.0, 0.5, 0.1], buckets=[3, 2, 2])
    assert "rewards/accuracies" not in m and "rewards/margins" not in m
    assert m["ranking_accuracy"] == pytest.approx(1 / 3)
    assert m["ranking_accuracy_normalised"] == pytest.approx(1 / 3)  # pair 0 normalised: -1/1 = -4/4, a tie
    assert m["idealised_ranking_accuracy"] == pytest.approx(2 / 3)
    assert (m["bucket=2/ranking_accuracy"], m["bucket=2/ranking_accuracy_normalised"],
            m["bucket=2/idealised_ranking_accuracy"]) == (0.0, 0.5, 0.5)
    assert m["bucket=3/idealised_ranking_accuracy"] == 1.0 and m["bucket=2/n"] == 2
