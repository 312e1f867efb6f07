"""Listwise losses: hand-derived values on a 3-response list, N = 2 equals DPO, gradcheck, padding, ties."""

import math

import pytest
import torch

from currydpo.errors import CurryError
from currydpo.losses import ListLogps, PairLogps, kendall_tau, lipo, list_loss, plackett_luce, pro
from currydpo.losses.pairwise import dpo

P, R, LEN, SCORES = [-10.0, -12.0, -15.0], [-11.0, -11.5, -14.0], [5, 4, 6], [5.0, 3.0, 1.0]
BETA = 0.1
r = [BETA * (p - q) for p, q in zip(P, R)]  # [0.1, -0.05, -0.1]
a = [p / n for p, n in zip(P, LEN)]  # [-2, -3, -2.5]


def lse(*v):
    return math.log(sum(math.exp(x) for x in v))


def make(ranks=(1, 2, 3), grad=False, ref=True):
    t = lambda v: torch.tensor([v], dtype=torch.float64, requires_grad=grad)  # noqa: E731
    return ListLogps(t(P), torch.tensor([LEN]), torch.tensor([list(ranks)]), torch.ones(1, 3, dtype=torch.bool),
                     t(R) if ref else None, torch.tensor([SCORES], dtype=torch.float64))


def test_plackett_luce_by_hand_and_ties_are_one_rank():
    expected = -(r[0] - lse(*r)) - (r[1] - lse(r[1], r[2]))
    assert plackett_luce(make(), beta=BETA)[0].item() == pytest.approx(expected, rel=1e-12)
    # R2 and R3 tied: only R1's term, and its denominator holds both
    assert plackett_luce(make((1, 2, 2)), beta=BETA)[0].item() == pytest.approx(-(r[0] - lse(*r)), rel=1e-12)
    # R1 and R2 tied: neither competes with the other
    expected = -(r[0] - lse(r[0], r[2])) - (r[1] - lse(r[1], r[2]))
    assert plackett_luce(make((1, 1, 2)), beta=BETA)[0].item() == pytest.approx(expected, rel=1e-12)
    assert plackett_luce(make((1, 1, 1)), beta=BETA)[0].item() == 0.0


def test_lipo_by_hand():
    gain = [2 ** s - 1 for s in SCORES]  # 31, 7, 1
    inv_d = [1 / math.log2(1 + t) for t in (1, 2, 3)]  # rewards already in rank order: τ = 1, 2, 3
    expected = sum(abs(gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j]) * math.log1p(math.exp(-(r[i] - r[j])))
                   for i, j in ((0, 1), (0, 2), (1, 2)))
    assert lipo(make(), beta=BETA)[0].item() == pytest.approx(expected, rel=1e-12)
    # τ follows the current rewards: swap the rewards of R2 and R3 and the discounts swap with them
    x = make()
    x.policy_logps = torch.tensor([[-10.0, -12.0 - 1.0, -15.0 + 2.0]], dtype=torch.float64)
    rr = (x.policy_logps - x.reference_logps)[0].mul(BETA).tolist()
    inv_d = [1.0, 1 / math.log2(4), 1 / math.log2(3)]
    expected = sum(abs(gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j]) * math.log1p(math.exp(-(rr[i] - rr[j])))
                   for i, j in ((0, 1), (0, 2), (1, 2)))
    assert lipo(x, beta=BETA)[0].item() == pytest.approx(expected, rel=1e-12)


def test_pro_by_hand_with_and_without_score_temperatures():
    sft = 0.05 * (3 - 1) ** 2 * 10.0  # w (K−1)² · −log π(y_1), summed log-prob
    plain = -(a[0] - lse(*a)) - (a[1] - lse(a[1], a[2])) + sft
    loss, rewards = pro(make(ref=False), beta=BETA, pro_sft_weight=0.05, pro_score_temperature=False)
    assert loss.item() == pytest.approx(plain, rel=1e-12)
    assert rewards[0].tolist() == pytest.approx([BETA * v for v in a])
    # 1/T_1^i = ψ_1 − ψ_i = 2, 4 and 1/T_1^1 = 4; 1/T_2^3 = 2 = 1/T_2^2
    temp = -(4 * a[0] - lse(4 * a[0], 2 * a[1], 4 * a[2])) - (2 * a[1] - lse(2 * a[1], 2 * a[2])) + sft
    loss, _ = pro(make(ref=False), beta=BETA, pro_sft_weight=0.05, pro_score_temperature=True)
    assert loss.item() == pytest.approx(temp, rel=1e-12)


def test_two_responses_plackett_luce_is_dpo():
    g = torch.Generator().manual_seed(0)
    pw, pl, rw, rl = (torch.randn(16, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    n = torch.full((16,), 5)
    expected, cr, rr = dpo(PairLogps(pw, pl, n, n, rw, rl), beta=BETA)
    x = ListLogps(torch.stack([pw, pl], 1), torch.stack([n, n], 1), torch.tensor([[1, 2]] * 16),
                  torch.ones(16, 2, dtype=torch.bool), torch.stack([rw, rl], 1))
    losses, rewards = plackett_luce(x, beta=BETA)
    torch.testing.assert_close(losses, expected, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(rewards, torch.stack([cr, rr], 1))


@pytest.mark.parametrize("name", ["plackett-luce", "lipo", "pro"])
def test_gradcheck_float64(name):
    x = make(grad=True)
    fn = {"plackett-luce": lambda y: plackett_luce(y, beta=BETA)[0],
          "lipo": lambda y: lipo(y, beta=BETA)[0],
          "pro": lambda y: pro(y, beta=BETA, pro_sft_weight=0.05, pro_score_temperature=True)[0]}[name]

    def f(policy, ref):
        return fn(ListLogps(policy, x.lengths, x.ranks, x.mask, ref, x.labels))

    assert torch.autograd.gradcheck(f, (x.policy_logps, x.reference_logps))


def test_padding_gives_the_same_per_list_values():
    """A batch of a 3-list and a 2-list (padded) equals each list alone."""
    three = make()
    two = ListLogps(three.policy_logps[:, :2], three.lengths[:, :2], three.ranks[:, :2], three.mask[:, :2],
                    three.reference_logps[:, :2], three.labels[:, :2])
    pad = lambda t, v: torch.cat([t[:, :2], torch.full((1, 1), v, dtype=t.dtype)], 1)  # noqa: E731
    batch = ListLogps(torch.cat([three.policy_logps, pad(three.policy_logps, 0.0)]),
                      torch.cat([three.lengths, pad(three.lengths, 0)]), torch.cat([three.ranks, pad(three.ranks, 9)]),
                      torch.cat([three.mask, torch.tensor([[True, True, False]])]),
                      torch.cat([three.reference_logps, pad(three.reference_logps, 0.0)]),
                      torch.cat([three.labels, pad(three.labels, 0.0)]))
    for name in ("plackett-luce", "lipo", "pro"):
        _, _, both = list_loss(name, batch, beta=BETA)
        alone = [list_loss(name, x, beta=BETA)[2].item() for x in (three, two)]
        assert both.tolist() == pytest.approx(alone, rel=1e-12), name


def test_metrics_and_kendall_tau():
    _, m, _ = list_loss("plackett-luce", make(), beta=BETA)
    assert m["rewards/chosen"] == pytest.approx(r[0]) and m["rewards/rejected"] == pytest.approx(r[2])
    assert m["rewards/margins"] == pytest.approx(r[0] - r[2])
    assert m["rewards/accuracies"] == 1.0 and m["rewards/kendall_tau"] == pytest.approx(1.0)
    ranks, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool)
    assert kendall_tau(torch.tensor([[1.0, 2.0, 3.0]]), ranks, mask).item() == pytest.approx(-1.0)
    assert kendall_tau(torch.tensor([[3.0, 1.0, 2.0]]), ranks, mask).item() == pytest.approx(1 / 3)


def test_listwise_and_pairwise_do_not_mix():
    with pytest.raises(CurryError, match="mix listwise and pairwise"):
        list_loss(["plackett-luce", "dpo"], make(), beta=BETA)
    with pytest.raises(CurryError, match="pairwise loss"):
        list_loss("dpo", make(), beta=BETA)
    with pytest.raises(CurryError, match="needs reference"):
        plackett_luce(make(ref=False), beta=BETA)
