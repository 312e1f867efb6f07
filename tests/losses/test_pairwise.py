"""Tier (a): every loss on a few numbers, expected values derived by hand with `math`."""

import math

import pytest
import torch

from currydpo.errors import CurryError
from currydpo.losses import LOSSES, PairLogps, check_loss, pair_loss

# Two pairs. Policy/reference summed log-probs and lengths.
PC, PR = [-10.0, -20.0], [-12.0, -15.0]
RC, RR = [-11.0, -19.0], [-11.5, -16.0]
LC, LR = [5, 10], [4, 6]
GAPS = [2.0, 0.5]
BETA = 0.1


def make(ref=True, gaps=True, grad=False):
    t = lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=grad)  # noqa: E731
    return PairLogps(t(PC), t(PR), torch.tensor(LC), torch.tensor(LR),
                     t(RC) if ref else None, t(RR) if ref else None, t(GAPS) if gaps else None)


def logsig(z):
    return -math.log1p(math.exp(-z))


def deltas(i):
    return PC[i] - RC[i], PR[i] - RR[i]  # Δ_w, Δ_l


def h(i):
    dw, dl = deltas(i)
    return BETA * (dw - dl)


def run(name, **kw):
    losses, cr, rr = LOSSES[name].fn(make(), beta=kw.pop("beta", BETA), **kw)
    return losses.tolist(), cr, rr


def test_pair0_by_hand():
    # pair 0: Δ_w = -10 + 11 = 1, Δ_l = -12 + 11.5 = -0.5, h = 0.1 * 1.5 = 0.15
    assert h(0) == pytest.approx(0.15)
    losses, _, _ = run("dpo")
    assert losses[0] == pytest.approx(math.log(1 + math.exp(-0.15)), rel=1e-12)


@pytest.mark.parametrize("i", [0, 1])
def test_dpo_and_rewards(i):
    losses, cr, rr = run("dpo")
    assert losses[i] == pytest.approx(-logsig(h(i)), rel=1e-12)
    dw, dl = deltas(i)
    assert cr[i].item() == pytest.approx(BETA * dw) and rr[i].item() == pytest.approx(BETA * dl)
    assert not cr.requires_grad


@pytest.mark.parametrize("i", [0, 1])
def test_cdpo_and_robust(i):
    eps = 0.2
    c = run("cdpo", label_smoothing=eps)[0][i]
    r = run("robust", label_smoothing=eps)[0][i]
    assert c == pytest.approx(-0.8 * logsig(h(i)) - 0.2 * logsig(-h(i)), rel=1e-12)
    assert r == pytest.approx((-0.8 * logsig(h(i)) + 0.2 * logsig(-h(i))) / 0.6, rel=1e-12)
    assert run("cdpo", label_smoothing=0.0)[0][i] == pytest.approx(run("dpo")[0][i])
    assert run("robust", label_smoothing=0.0)[0][i] == pytest.approx(run("dpo")[0][i])


def test_robust_rejects_bad_eps():
    with pytest.raises(CurryError, match=r"\[0, 0.5\)"):
        run("robust", label_smoothing=0.5)


@pytest.mark.parametrize("i", [0, 1])
def test_ipo_both_reductions(i):
    dw, dl = deltas(i)
    norm = run("ipo", ipo_length_normalise=True)[0][i]
    summed = run("ipo", ipo_length_normalise=False)[0][i]
    assert norm == pytest.approx((dw / LC[i] - dl / LR[i] - 1 / (2 * BETA)) ** 2, rel=1e-12)
    assert summed == pytest.approx((dw - dl - 5.0) ** 2, rel=1e-12)


def test_ipo_value_pair0():
    # (1/5 - (-0.5)/4 - 5)^2 = (0.2 + 0.125 - 5)^2 = 4.675^2
    assert run("ipo")[0][0] == pytest.approx(4.675 ** 2)


@pytest.mark.parametrize("i", [0, 1])
def test_hinge(i):
    assert run("hinge")[0][i] == pytest.approx(max(0.0, 1 - h(i)), rel=1e-12)
    assert run("hinge", beta=10.0)[0][0] == 0.0  # h = 15 > 1


@pytest.mark.parametrize("i", [0, 1])
def test_simpo_reference_free(i):
    beta, gamma = 2.0, 0.5
    x = make(ref=False)
    losses, cr, rr = LOSSES["simpo"].fn(x, beta=beta, gamma=gamma)
    aw, al = PC[i] / LC[i], PR[i] / LR[i]
    assert losses[i].item() == pytest.approx(-logsig(beta * aw - beta * al - gamma), rel=1e-12)
    assert cr[i].item() == pytest.approx(beta * aw) and rr[i].item() == pytest.approx(beta * al)


@pytest.mark.parametrize("i", [0, 1])
def test_orpo_reference_free(i):
    lam = 0.1
    losses, cr, _ = LOSSES["orpo"].fn(make(ref=False), beta=lam)
    aw, al = PC[i] / LC[i], PR[i] / LR[i]
    odds_w = math.exp(aw) / (1 - math.exp(aw))
    odds_l = math.exp(al) / (1 - math.exp(al))
    expected = -aw - lam * math.log(1 / (1 + 1 / (odds_w / odds_l)))  # log σ(log(odds_w/odds_l))
    assert losses[i].item() == pytest.approx(expected, rel=1e-10)
    assert cr[i].item() == pytest.approx(lam * aw)


@pytest.mark.parametrize("i", [0, 1])
def test_mmpo(i):
    gamma = 1.5
    p = 1 / (1 + math.exp(-gamma * GAPS[i]))
    expected = -p * logsig(h(i)) - (1 - p) * logsig(-h(i))
    assert run("mmpo", gamma=gamma)[0][i] == pytest.approx(expected, rel=1e-12)


def test_mmpo_needs_gaps_and_reference_losses_need_reference():
    with pytest.raises(CurryError, match="score gaps"):
        LOSSES["mmpo"].fn(make(gaps=False), beta=BETA, gamma=1.0)
    needing = [n for n, spec in LOSSES.items() if spec.reference and not spec.listwise]
    assert set(needing) >= {"dpo", "cdpo", "robust", "ipo", "hinge", "mmpo", "discopop", "exo", "nca", "bco-pair"}
    for name in needing:
        opts = {o: {"label_smoothing": 0.1, "ipo_length_normalise": True}.get(o, 1.0) for o in LOSSES[name].options}
        with pytest.raises(CurryError, match="reference"):
            LOSSES[name].fn(make(ref=False), beta=BETA, **opts)


def test_check_loss():
    assert check_loss("dpo") == "dpo"
    with pytest.raises(CurryError) as e:
        check_loss("sigmoidd")
    for name in LOSSES:
        assert name in str(e.value)


def test_pair_loss_mean_and_metrics():
    loss, m, per_pair = pair_loss("dpo", make(), beta=BETA)
    l0, l1 = -logsig(h(0)), -logsig(h(1))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-12)
    assert per_pair.tolist() == pytest.approx([l0, l1])
    (dw0, dl0), (dw1, dl1) = deltas(0), deltas(1)
    assert m["loss"] == pytest.approx(loss.item())
    assert m["rewards/chosen"] == pytest.approx(BETA * (dw0 + dw1) / 2)
    assert m["rewards/rejected"] == pytest.approx(BETA * (dl0 + dl1) / 2)
    assert m["rewards/margins"] == pytest.approx((h(0) + h(1)) / 2)
    assert m["rewards/accuracies"] == (float(h(0) > 0) + float(h(1) > 0)) / 2 == 0.5  # h(1) = 0.1*(-1-1) < 0
    assert m["logps/chosen"] == pytest.approx(-15.0) and m["logps/rejected"] == pytest.approx(-13.5)


def test_pair_loss_wpo_rpo():
    l0, l1 = -logsig(h(0)), -logsig(h(1))
    # WPO: weight exp(mean logp_w + mean logp_l): pair 0 exp(-2 - 3), pair 1 exp(-2 - 2.5)
    w0, w1 = math.exp(-10 / 5 - 12 / 4), math.exp(-20 / 10 - 15 / 6)
    _, _, pp = pair_loss("dpo", make(), beta=BETA, wpo=True)
    assert pp.tolist() == pytest.approx([w0 * l0, w1 * l1], rel=1e-12)
    # RPO: + alpha * (-mean logp_w)
    _, _, pp = pair_loss("dpo", make(), beta=BETA, rpo_alpha=0.5)
    assert pp.tolist() == pytest.approx([l0 + 0.5 * 2.0, l1 + 0.5 * 2.0], rel=1e-12)


def test_wpo_weight_is_detached_and_grads_flow():
    x = make(grad=True)
    loss, _, _ = pair_loss("dpo", x, beta=BETA, wpo=True)
    loss.backward()
    # d/dπ_w of w0 * -log σ(h0) / 2 with w0 constant: -w0 * β * σ(-h0) / 2
    w0 = math.exp(-5.0)
    expected = -w0 * BETA * (1 / (1 + math.exp(h(0)))) / 2
    assert x.policy_chosen_logps.grad[0].item() == pytest.approx(expected, rel=1e-10)
    assert x.reference_chosen_logps.grad[0].item() == pytest.approx(-expected, rel=1e-10)


def test_label_smoothing_only_for_losses_that_use_it():
    with pytest.raises(CurryError, match="label_smoothing"):
        pair_loss("dpo", make(), beta=BETA, label_smoothing=0.1)
    pair_loss("cdpo", make(), beta=BETA, label_smoothing=0.1)
    with pytest.raises(CurryError, match="unknown loss"):
        pair_loss("nope", make(), beta=BETA)


def sig(z):
    return 1 / (1 + math.exp(-z))


@pytest.mark.parametrize("i", [0, 1])
def test_trl_family_by_hand(i):
    dw, dl = deltas(i)
    rw, rl, hh = BETA * dw, BETA * dl, h(i)
    m = sig(hh / 0.05)
    eps = 1e-3
    expected = {
        "discopop": (1 - m) * -logsig(hh) + m * math.exp(-hh),
        "exo": sig(hh) * (logsig(hh) - math.log(1 - eps)) + sig(-hh) * (logsig(-hh) - math.log(eps)),
        "nca": -logsig(rw) - 0.5 * logsig(-rw) - 0.5 * logsig(-rl),
        "bco-pair": -logsig(rw) + -logsig(-rl),
        "apo-zero": 1 - sig(rw) + sig(rl),
        "apo-down": sig(rw) + 1 - sig(hh),
        "sigmoid-norm": -logsig(BETA * (dw / LC[i] - dl / LR[i])),
        "sft": -PC[i] / LC[i],
    }
    opts = {"discopop": {"discopop_tau": 0.05}, "exo": {"label_smoothing": eps}}
    for name, value in expected.items():
        assert run(name, **opts.get(name, {}))[0][i] == pytest.approx(value, rel=1e-12), name


def test_exo_needs_epsilon():
    with pytest.raises(CurryError, match="exo.*label_smoothing"):
        run("exo", label_smoothing=0.0)


def test_weighted_combination_and_component_metrics():
    l_dpo = [-logsig(h(i)) for i in (0, 1)]
    l_sft = [-PC[i] / LC[i] for i in (0, 1)]
    loss, m, pp = pair_loss(["dpo", "sft"], make(), beta=BETA, loss_weights=[0.8, 1.0])
    assert pp.tolist() == pytest.approx([0.8 * a + b for a, b in zip(l_dpo, l_sft)], rel=1e-12)
    assert m["loss/dpo"] == pytest.approx(sum(l_dpo) / 2) and m["loss/sft"] == pytest.approx(sum(l_sft) / 2)
    assert m["rewards/chosen"] == pytest.approx(BETA * (deltas(0)[0] + deltas(1)[0]) / 2)  # the first loss's
    assert "loss/dpo" not in pair_loss("dpo", make(), beta=BETA)[1]
    with pytest.raises(CurryError, match="2 losses"):
        pair_loss(["dpo", "sft"], make(), beta=BETA, loss_weights=[1.0])


def test_options_must_be_taken_by_some_loss():
    pair_loss(["dpo", "cdpo"], make(), beta=BETA, label_smoothing=0.1)  # cdpo takes it
    with pytest.raises(CurryError, match="discopop_tau=0.1 is only used by the losses discopop"):
        pair_loss("dpo", make(), beta=BETA, discopop_tau=0.1)
    for name, spec in LOSSES.items():  # every option a spec names is a keyword of its function
        import inspect

        params = inspect.signature(spec.fn).parameters
        assert set(spec.options) <= set(params), name
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), name


def authors_k2(l_other_w, l_other_l, l_p_w, l_p_l, eta):
    """A literal transcription of MRPO's released K = 2 code (trainer_mref.py): ref1 = other, ref2 = primary."""
    a1, a2 = l_other_w - l_other_l, l_p_w - l_p_l
    alpha = abs(a1) / (abs(a1) + abs(a2))
    b1, b2 = (l_p_w + l_other_w) / 2, (l_p_l + l_other_l) / 2
    scale = abs(b1) / (abs(b1) + abs(b2))
    out = []
    for lo, lp, e in ((l_other_w, l_p_w, eta * scale), (l_other_l, l_p_l, eta * (1 - scale))):
        lo = min(max(lo, lp * (1 + e)), lp * (1 - e))
        c = max(lo, lp)
        out.append(lo + lp - (c + math.log(alpha * math.exp(lo - c) + (1 - alpha) * math.exp(lp - c))))
    return out


def test_mrpo_reference_matches_the_authors_k2_code_and_reduces_to_one_reference():
    from currydpo.losses import mrpo_reference

    g = torch.Generator().manual_seed(0)
    primary_w, primary_l = -20 - 10 * torch.rand(8, generator=g, dtype=torch.float64), -25 - 10 * torch.rand(
        8, generator=g, dtype=torch.float64)
    other_w = primary_w + 4 * torch.randn(8, generator=g, dtype=torch.float64)  # some clipped, some not
    other_l = primary_l + 4 * torch.randn(8, generator=g, dtype=torch.float64)
    w, l = mrpo_reference(torch.stack([primary_w, other_w]), torch.stack([primary_l, other_l]), eta=0.1)
    for i in range(8):
        expected = authors_k2(other_w[i].item(), other_l[i].item(), primary_w[i].item(), primary_l[i].item(), 0.1)
        assert [w[i].item(), l[i].item()] == pytest.approx(expected, rel=1e-12)
    one = mrpo_reference(primary_w[None], primary_l[None], eta=0.1)
    assert torch.equal(one[0], primary_w) and torch.equal(one[1], primary_l)
    # η = 0 clips every other reference onto the primary: three references collapse to it
    three_w, three_l = torch.stack([primary_w, other_w, other_w - 1]), torch.stack([primary_l, other_l, other_l + 1])
    w, l = mrpo_reference(three_w, three_l, eta=0.0)
    torch.testing.assert_close(w, primary_w) and torch.testing.assert_close(l, primary_l)
