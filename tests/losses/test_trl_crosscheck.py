"""Cross-check against TRL's DPOTrainer (the reference implementation, a dev dependency).

TRL builds its batches from its own tokenisation and computes log-probs with its fused
LM head; we check (1) our `encode` gives the same prompt/chosen/rejected ids, (2) our
per-pair losses and rewards equal TRL's for every loss_type we share (and RPO's NLL term,
TRL's loss_type "sft", and weighted combinations: loss_type list + loss_weights), pair by pair,
and (3) the batch loss and its gradients agree.
TRL's `_compute_loss` returns only the batch mean, so per-pair values come from
single-pair batches.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from currydpo.losses import PairLogps, pair_loss
from currydpo.training.logprobs import response_logps
from currydpo.training.tokenize import encode

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

BETA = 0.1
PROMPTS = ["what is two plus two?", "hello, how are you today?", "please write a short poem about the sea.",
           "the cat sat on the mat and"]
CHOSEN = [" it is four.", " i am fine, thank you very much!", " the sea and the sky are kind.", " the dog ran."]
REJECTED = [" five", " go away, bad answer.", " no.", " the dog ran in the park and the cat sat on the mat."]
KEYS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
        "logps/rejected"]
# TRL loss_type -> (our loss name, label_smoothing); exo's epsilon is TRL's label_smoothing (EXO paper: 1e-3)
CASES = {"sigmoid": ("dpo", 0.0), "ipo": ("ipo", 0.0), "hinge": ("hinge", 0.0), "robust": ("robust", 0.2),
         "discopop": ("discopop", 0.0), "exo_pair": ("exo", 1e-3), "nca_pair": ("nca", 0.0),
         "bco_pair": ("bco-pair", 0.0), "apo_zero": ("apo-zero", 0.0), "apo_down": ("apo-down", 0.0),
         "sigmoid_norm": ("sigmoid-norm", 0.0)}
# Float32 floor. TRL's fused LM head accumulates log-softmax in float32 whatever the model dtype
# (trl/kernels/chunked_logprob.py), so a summed log-prob of magnitude M carries a rounding error of
# order eps32 * M on each side (measured: at most 0.45 eps32 * M on these pairs). A quantity built
# from the four summed log-probs of a pair (magnitudes adding to M_i) and scaled by s (β for rewards)
# is compared with atol_i = s * eps32 * M_i on top of rtol 1e-5; M_i is 135..426 here, so the floor is
# 2e-6..5e-6 on rewards/logps. Losses keep the fixed atol 1e-6.
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def models(path):
    """A policy (the tiny model, perturbed so that it differs from the reference) and the reference."""
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return policy.train(), ref.eval()


def trl_trainer(path, tok, tmp_path, loss_type, label_smoothing=0.0, loss_weights=None):
    policy, ref = models(path)
    ds = datasets.Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False, fp16=False, beta=BETA,
        loss_type=loss_type, loss_weights=loss_weights, label_smoothing=label_smoothing,
        per_device_train_batch_size=len(PROMPTS), max_length=None, disable_tqdm=True, seed=0)
    return trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)


def trl_per_pair(trainer):
    """Per-pair TRL loss and metrics, from single-pair batches."""
    losses, metrics = [], {k: [] for k in KEYS}
    for row in trainer.train_dataset:
        trainer._metrics["train"].clear()
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, trainer.data_collator([row])).item())
        for k in KEYS:
            metrics[k] += trainer._metrics["train"][k]
    return torch.tensor(losses, dtype=torch.float64), {k: torch.tensor(v, dtype=torch.float64)
                                                       for k, v in metrics.items()}


def ours(path, tok, name, label_smoothing=0.0, rpo_alpha=None, loss_weights=None):
    policy, ref = models(path)
    enc = lambda p, r: encode(tok, p, r, max_length=1024, max_prompt_length=512)  # noqa: E731
    batch = [enc(p, c) for p, c in zip(PROMPTS, CHOSEN)] + [enc(p, r) for p, r in zip(PROMPTS, REJECTED)]
    B = len(PROMPTS)
    logps, n = response_logps(policy, batch, tok.pad_token_id)
    with torch.no_grad():
        ref_logps, _ = response_logps(ref, batch, tok.pad_token_id)
    x = PairLogps(logps[:B], logps[B:], n[:B], n[B:], ref_logps[:B], ref_logps[B:])
    loss, metrics, per_pair = pair_loss(name, x, beta=BETA, label_smoothing=label_smoothing, rpo_alpha=rpo_alpha,
                                        loss_weights=loss_weights)
    cr, rr = BETA * (x.policy_chosen_logps - x.reference_chosen_logps), BETA * (x.policy_rejected_logps
                                                                                  - x.reference_rejected_logps)
    per = {"rewards/chosen": cr, "rewards/rejected": rr, "rewards/margins": cr - rr,
           "rewards/accuracies": (cr > rr).float(), "logps/chosen": x.policy_chosen_logps,
           "logps/rejected": x.policy_rejected_logps}
    magnitude = sum(v.detach().double().abs() for v in (x.policy_chosen_logps, x.policy_rejected_logps,
                                                        x.reference_chosen_logps, x.reference_rejected_logps))
    return loss, metrics, per_pair, {k: v.detach().double() for k, v in per.items()}, policy, magnitude


def close(a, b, atol=1e-6):
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=atol)


def close_summed(a, b, scale, magnitude):
    """``close`` with the float32 floor of a quantity built from summed log-probs (see EPS32)."""
    a, b = a.double(), b.double()
    atol = torch.clamp(scale * EPS32 * magnitude, min=1e-6)
    bad = (a - b).abs() > atol + 1e-5 * b.abs()
    assert not bad.any(), f"not close at {bad.nonzero().flatten().tolist()}: {a.tolist()} vs {b.tolist()}"


def test_same_token_ids_as_trl(tiny_model_dir, tok, tmp_path):
    trainer = trl_trainer(tiny_model_dir, tok, tmp_path, ["sigmoid"])
    for i, row in enumerate(trainer.train_dataset):
        c = encode(tok, PROMPTS[i], CHOSEN[i], max_length=1024, max_prompt_length=512)
        r = encode(tok, PROMPTS[i], REJECTED[i], max_length=1024, max_prompt_length=512)
        assert list(c.prompt_ids) == row["prompt_ids"] == list(r.prompt_ids)
        assert list(c.response_ids) == row["chosen_ids"]
        assert list(r.response_ids) == row["rejected_ids"]
        assert row["chosen_ids"][-1] == tok.eos_token_id


@pytest.mark.parametrize("trl_loss", list(CASES))
def test_per_pair_losses_and_rewards_match_trl(tiny_model_dir, tok, tmp_path, trl_loss):
    name, eps = CASES[trl_loss]
    trl_losses, trl_metrics = trl_per_pair(trl_trainer(tiny_model_dir, tok, tmp_path, [trl_loss], eps))
    _, metrics, per_pair, per, _, magnitude = ours(tiny_model_dir, tok, name, eps)
    close(per_pair.detach(), trl_losses)
    for k in KEYS:
        close_summed(per[k], trl_metrics[k], BETA if k.startswith("rewards/") else 1.0, magnitude)
    assert 0 < per["rewards/accuracies"].mean() < 1  # the pairs are not all ranked the same way
    # batch metrics are the means of the per-pair ones
    for k in KEYS:
        assert metrics[k] == pytest.approx(trl_metrics[k].mean().item(), rel=1e-5, abs=1e-6)


def test_rpo_matches_trl_sigmoid_plus_sft(tiny_model_dir, tok, tmp_path):
    alpha = 0.7
    trainer = trl_trainer(tiny_model_dir, tok, tmp_path, ["sigmoid", "sft"], loss_weights=[1.0, alpha])
    trl_losses, _ = trl_per_pair(trainer)
    _, _, per_pair, _, _, _ = ours(tiny_model_dir, tok, "dpo", rpo_alpha=alpha)
    close(per_pair.detach(), trl_losses)


def test_weighted_combination_matches_trl_loss_weights(tiny_model_dir, tok, tmp_path):
    """MPO's mix (TRL docs): loss_type [sigmoid, bco_pair, sft] with loss_weights [0.8, 0.2, 1.0]."""
    weights = [0.8, 0.2, 1.0]
    trainer = trl_trainer(tiny_model_dir, tok, tmp_path, ["sigmoid", "bco_pair", "sft"], loss_weights=weights)
    trl_losses, _ = trl_per_pair(trainer)
    _, metrics, per_pair, _, _, _ = ours(tiny_model_dir, tok, ["dpo", "bco-pair", "sft"], loss_weights=weights)
    close(per_pair.detach(), trl_losses)
    parts = [ours(tiny_model_dir, tok, n)[1]["loss"] for n in ("dpo", "bco-pair", "sft")]
    assert [metrics[f"loss/{n}"] for n in ("dpo", "bco-pair", "sft")] == pytest.approx(parts, rel=1e-12)


def test_batch_loss_and_gradients_match_trl(tiny_model_dir, tok, tmp_path):
    trainer = trl_trainer(tiny_model_dir, tok, tmp_path, ["sigmoid"])
    rows = [trainer.train_dataset[i] for i in range(len(PROMPTS))]
    trl_loss = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
    trl_loss.backward()
    loss, metrics, _, _, policy, _ = ours(tiny_model_dir, tok, "dpo")
    loss.backward()
    close(loss.detach(), trl_loss.detach())
    assert metrics["loss"] == pytest.approx(trl_loss.item(), rel=1e-5)
    trl_grads = dict(trainer.model.named_parameters())
    for n, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, trl_grads[n].grad, rtol=1e-4, atol=1e-6)
