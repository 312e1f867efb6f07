"""Evaluate one trained model: what the paper measures, plus the cheap preference metrics.

- generation: sample answers to held-out prompts, judge them (gold function, reward
  model or LLM judge), adjusted win rate against a baseline's answers with a bootstrap
  CI, mean judge score for pointwise judges;
- KL to the reference: mean over prompts of log pi(y|x) - log ref(y|x) on the sampled
  answers y ~ pi (a Monte-Carlo estimate of KL(pi || ref), valid when answers are sampled
  at temperature 1 without top-p; otherwise reported as None). A negative estimate is
  sampling noise (KL >= 0) and is flagged ``kl_noise``;
- preference metrics on held-out ranked records (see `training/preference.py`, shared with training);
  a model that is its own reference has no implicit reward, so its reward accuracy and margin
  are None (n/a), not 0.
"""

from __future__ import annotations

from typing import Sequence

from ..config import DataConfig
from ..data.pairs import build_pairs
from ..data.records import Record, Response
from ..generation.engines import HFEngine
from ..generation.generate import GenerationConfig, Prompt
from ..training.preference import preference_metrics
from ..training.responses import ResponseTable, logps_for_rows
from ..training.tokenize import encode_for
from .winrate import bootstrap_ci, win_rate_report


def sample_logratio(policy, reference, tokenizer, prompts: Sequence[Prompt | str], answers: Sequence[str], *,
                    data: DataConfig | None = None, batch_size: int = 16) -> list[float]:
    """Per-answer log pi(y|x) - log ref(y|x) (summed over tokens), tokenised by the run's rule (``data``)."""
    recs = [Record(str(j), p.messages if isinstance(p, Prompt) and p.messages else
                   (p.text if isinstance(p, Prompt) else p), [Response(a)])
            for j, (p, a) in enumerate(zip(prompts, answers))]
    enc = encode_for(tokenizer, recs, data or DataConfig(), progress=False)
    table = ResponseTable([(j, 0) for j in range(len(recs))], [e[0] for e in enc], {})
    rows = list(range(len(recs)))
    lp, _ = logps_for_rows(policy, table, rows, tokenizer.pad_token_id, batch_size, desc="KL policy", progress=False)
    lr, _ = logps_for_rows(reference, table, rows, tokenizer.pad_token_id, batch_size, desc="KL ref", progress=False)
    return (lp - lr).tolist()


def heldout_preference(policy, reference, tokenizer, records: list[Record], *, beta: float,
                       data: DataConfig | None = None, seed: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Reward/ranking accuracy on held-out ranked records, overall and per rejected rank.

    Pairs and tokens follow the run's data config (``data``: strategy, min_gap, allow_ties, chat
    template, length limits), so the numbers equal the held-out metrics training logs.

    ``reference`` None: the reference-free metrics only (ranking accuracies, idealised with the
    model as its own reference)."""
    data = data or DataConfig()
    pairs = build_pairs(records, data.strategy, data.min_gap, data.allow_ties, seed)
    if not pairs:
        return {}
    table = ResponseTable.from_pairs(pairs, encode_for(tokenizer, records, data, progress=False))
    rows, ci, ri = table.rows(pairs)
    lp, n = logps_for_rows(policy, table, rows, tokenizer.pad_token_id, batch_size, progress=False)
    rc = rr = None
    if reference is not None:
        lr, _ = logps_for_rows(reference, table, rows, tokenizer.pad_token_id, batch_size, progress=False)
        rc, rr = lr[ci], lr[ri]
    return preference_metrics(lp[ci], lp[ri], n[ci], n[ri], rc, rr, beta, [p.score_gap for p in pairs],
                              buckets=[p.rejected_position for p in pairs])


def evaluate_model(policy, tokenizer, *, prompts: Sequence[Prompt | str] = (), gen: GenerationConfig | None = None,
                   judge=None, baseline_answers: Sequence[str] | None = None, reference=None,
                   heldout: list[Record] | None = None, beta: float = 0.1, seed: int = 0,
                   data: DataConfig | None = None, progress: bool = True, engine=None) -> tuple[dict, list[str]]:
    """All metrics that the given inputs allow; returns (metrics, sampled answers). ``data`` is the
    run's data config: how responses are paired and tokenised (default: the config defaults).
    ``engine`` samples the answers (`engines.make_engine`); default: ``hf`` on ``policy``."""
    gen = gen or GenerationConfig(seed=seed)
    out: dict = {}
    answers: list[str] = []
    if prompts:
        answers = (engine or HFEngine(policy, tokenizer)).generate(prompts, gen, progress=progress)
        out["answer_chars"] = sum(len(a) for a in answers) / len(answers)
        if judge is not None and hasattr(judge, "score"):
            scores = judge.score([p if isinstance(p, str) else p.text for p in prompts], answers)
            out["judge_score"] = sum(scores) / len(scores)
            out["judge_score_ci"] = list(bootstrap_ci(scores, seed=seed))
        if judge is not None and baseline_answers is not None:
            out["win_rate"] = win_rate_report(judge, prompts, answers, baseline_answers, seed=seed)
        exact = gen.do_sample and gen.temperature == 1.0 and gen.top_p == 1.0
        if reference is not None and exact:
            kl = sample_logratio(policy, reference, tokenizer, prompts, answers, data=data,
                                  batch_size=gen.batch_size)
            out["kl"] = sum(kl) / len(kl)
            if out["kl"] < 0:  # KL >= 0: a negative Monte-Carlo estimate is noise around a small KL, not a value
                out["kl_noise"] = True
        elif reference is not None:
            out["kl"] = None  # samples at temperature != 1 do not estimate KL(pi || ref)
    if heldout:  # without a reference: the reference-free preference metrics only
        same = reference is policy  # e.g. the SFT model against itself: every implicit reward is 0
        out["preference"] = heldout_preference(policy, None if same else reference, tokenizer, heldout, beta=beta,
                                               data=data, seed=seed)
        if same and out["preference"]:  # undefined, not 0.000: reported as n/a
            out["preference"].update({"rewards/accuracies": None, "rewards/margins": None})
    return out, answers
