"""Evaluate one trained model: what the paper measures, plus the cheap preference metrics.

- generation: sample answers to held-out prompts, judge them (gold function, reward
  model or LLM judge), adjusted win rate against a baseline's answers with a bootstrap
  CI, mean judge score for pointwise judges;
- KL to the reference: mean over prompts of log pi(y|x) - log ref(y|x) on the sampled
  answers y ~ pi (a Monte-Carlo estimate of KL(pi || ref), valid when answers are sampled
  at temperature 1 without top-p; otherwise reported as None). Both log-probs are summed over
  exactly the tokens that were sampled (`generate.Sample`): x is the prompt's ids as fed to the
  engine, y the generated ids through the EOS when one was sampled; an answer cut at
  ``max_new_tokens`` has no EOS, and nothing is decoded and re-tokenised. A negative estimate is
  sampling noise (KL >= 0) and is flagged ``kl_noise``;
- preference metrics on held-out ranked records (see `training/preference.py`, shared with training);
  a model that is its own reference has no implicit reward, so its reward accuracy and margin
  are None (n/a), not 0.

Every log-prob here goes through a `responses.Scorer`, the function training scores with (LM-head
kernel from ``model.fused_logprobs``, packing, pad token, and autocast when it carries the run's
accelerator): ``evaluate_model(scorer=run.scorer)`` scores an in-memory policy exactly as training
does; without one, a scorer is built for the policy with ``fused_logprobs`` (as training resolves it
on the same device).
"""

from __future__ import annotations

from typing import Sequence

from ..config import DataConfig
from ..data.pairs import build_pairs
from ..data.records import Record
from ..generation.engines import HFEngine
from ..generation.generate import GenerationConfig, Prompt, Sample
from ..training.preference import preference_metrics
from ..training.responses import ResponseTable, Scorer
from ..training.tokenize import Encoded, encode_for
from .winrate import bootstrap_ci, win_rate_report


def scorer_for(policy, tokenizer, fused_logprobs: str = "auto", batch_size: int = 16) -> Scorer:
    """The `Scorer` evaluation uses when none is handed in: ``policy``'s, with ``fused_logprobs``
    (``model.fused_logprobs``) resolved on its device, no accelerator (no autocast)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Scorer.for_model(policy, pad, fused_logprobs, next(policy.parameters()).device, None, batch_size)


def sample_logratio(policy, reference, samples: Sequence[Sample], scorer: Scorer) -> list[float]:
    """Per answer, log pi(y|x) - log ref(y|x) summed over the sampled tokens: ``prompt_ids`` then
    ``answer_ids`` of each `Sample`, exactly as sampled (EOS only where one was sampled)."""
    table = ResponseTable([(j, 0) for j in range(len(samples))],
                          [Encoded(s.prompt_ids, s.answer_ids) for s in samples], {})
    rows = list(range(len(samples)))
    lp, _ = scorer.score(policy, table, rows, desc="KL policy")
    lr, _ = scorer.score(reference, table, rows, desc="KL reference")
    return (lp - lr).tolist()


def heldout_preference(policy, reference, tokenizer, records: list[Record], *, beta: float,
                       data: DataConfig | None = None, seed: int = 0, batch_size: int = 16,
                       scorer: Scorer | None = None) -> dict[str, float]:
    """Reward/ranking accuracy on held-out ranked records, overall and per rejected rank.

    Pairs and tokens follow the run's data config (``data``: strategy, min_gap, allow_ties, chat
    template, length limits) and log-probs the run's ``scorer`` (default `scorer_for` the policy), so
    the numbers equal the held-out metrics training logs.

    ``reference`` None: the reference-free metrics only (ranking accuracies, idealised with the
    model as its own reference)."""
    data = data or DataConfig()
    pairs = build_pairs(records, data.strategy, data.min_gap, data.allow_ties, seed)
    if not pairs:
        return {}
    table = ResponseTable.from_pairs(pairs, encode_for(tokenizer, records, data, progress=False))
    rows, ci, ri = table.rows(pairs)
    scorer = scorer or scorer_for(policy, tokenizer, batch_size=batch_size)
    lp, n = scorer.score(policy, table, rows, desc="held-out policy")
    rc = rr = None
    if reference is not None:
        lr, _ = scorer.score(reference, table, rows, desc="held-out reference")
        rc, rr = lr[ci], lr[ri]
    return preference_metrics(lp[ci], lp[ri], n[ci], n[ri], rc, rr, beta, [p.score_gap for p in pairs],
                              buckets=[p.rejected_position for p in pairs])


def evaluate_model(policy, tokenizer, *, prompts: Sequence[Prompt | str] = (), gen: GenerationConfig | None = None,
                   judge=None, baseline_answers: Sequence[str] | None = None, reference=None,
                   heldout: list[Record] | None = None, beta: float = 0.1, seed: int = 0,
                   data: DataConfig | None = None, progress: bool = True, engine=None,
                   scorer: Scorer | None = None, fused_logprobs: str = "auto") -> tuple[dict, list[str]]:
    """All metrics that the given inputs allow; returns (metrics, sampled answers). ``data`` is the
    run's data config: how responses are paired and tokenised (default: the config defaults).
    ``engine`` samples the answers (`engines.make_engine`); default: ``hf`` on ``policy``.
    ``scorer``: the log-prob function of every score here (a training run's ``run.scorer``: its LM
    head and autocast); default `scorer_for` ``policy`` with ``fused_logprobs`` (``model.fused_logprobs``).
    With an accelerator of several processes, every process must call this (the scorer gathers)."""
    gen = gen or GenerationConfig(seed=seed)
    scorer = scorer or scorer_for(policy, tokenizer, fused_logprobs)
    out: dict = {"lm_head": scorer.lm_head}
    answers: list[str] = []
    if prompts:
        samples = (engine or HFEngine(policy, tokenizer)).samples(prompts, gen, progress=progress)
        answers = [s.text for s in samples]
        out["answer_chars"] = sum(len(a) for a in answers) / len(answers)
        if judge is not None and hasattr(judge, "score"):
            scores = judge.score([p if isinstance(p, str) else p.text for p in prompts], answers)
            out["judge_score"] = sum(scores) / len(scores)
            out["judge_score_ci"] = list(bootstrap_ci(scores, seed=seed))
        if judge is not None and baseline_answers is not None:
            out["win_rate"] = win_rate_report(judge, prompts, answers, baseline_answers, seed=seed)
        exact = gen.do_sample and gen.temperature == 1.0 and gen.top_p == 1.0
        if reference is not None and exact:
            kl = sample_logratio(policy, reference, samples, scorer)
            out["kl"] = sum(kl) / len(kl)
            if out["kl"] < 0:  # KL >= 0: a negative Monte-Carlo estimate is noise around a small KL, not a value
                out["kl_noise"] = True
        elif reference is not None:
            out["kl"] = None  # samples at temperature != 1 do not estimate KL(pi || ref)
    if heldout:  # without a reference: the reference-free preference metrics only
        same = reference is policy  # e.g. the SFT model against itself: every implicit reward is 0
        out["preference"] = heldout_preference(policy, None if same else reference, tokenizer, heldout, beta=beta,
                                               data=data, seed=seed, scorer=scorer)
        if same and out["preference"]:  # undefined, not 0.000: reported as n/a
            out["preference"].update({"rewards/accuracies": None, "rewards/margins": None})
    return out, answers
