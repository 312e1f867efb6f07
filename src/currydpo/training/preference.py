"""Preference-level metrics on held-out pairs: cheap, no generation.

- reward accuracy / margin: the implicit DPO reward r = beta * (log pi - log ref)
  ranks chosen above rejected (Rafailov et al. 2023);
- ranking accuracy: the policy itself gives the chosen response the higher likelihood
  (summed, and length-normalised). Chen et al. 2024 ("Preference Learning Algorithms
  Do Not Learn Preference Rankings") show most aligned models stay under 60% here;
- idealised ranking accuracy: the ranking accuracy of the exact DPO optimum
  pi*(y) ∝ ref(y) exp(r*(y)/beta) (Chen et al. 2024, Thm 3.1). We take the true reward
  difference from the data's score gap under a Bradley-Terry model with unit scale,
  r*(y_w) - r*(y_l) = s_w - s_l, so a pair is ranked right at the optimum iff
  log ref(y_w) - log ref(y_l) + (s_w - s_l) / beta > 0. (Pairs without scores are skipped.)
Every metric is reported overall and per bucket (e.g. the rejected response's rank).

Without a reference model (``reference_*_logps`` None) only what needs none is reported:
ranking accuracy, plain and length-normalised, and the idealised ranking accuracy with
the model itself as the reference — the accuracy DPO's optimum would reach starting
from this model (Chen et al. 2024 measure exactly this on base models first).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch


def _metrics(pc, pr, nc, nr, rc, rr, beta, gaps) -> dict[str, float]:
    out = {}
    if rc is None:  # no reference: the model is its own reference for the idealised accuracy, no rewards
        rc, rr = pc, pr
    else:
        chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
        out["rewards/accuracies"] = (chosen_rewards > rejected_rewards).double().mean().item()
        out["rewards/margins"] = (chosen_rewards - rejected_rewards).mean().item()
    out.update({
        # a tie (equal log-probs: e.g. identical tokens) is not a correct ranking; it is counted apart
        "ranking_accuracy": (pc > pr).double().mean().item(),
        "ranking_accuracy_normalised": (pc / nc > pr / nr).double().mean().item(),
        "ranking_ties": (pc == pr).double().mean().item(),
        "logps/chosen": pc.mean().item(),
        "logps/rejected": pr.mean().item(),
        "n": len(pc),
    })
    scored = [j for j, g in enumerate(gaps) if g is not None]
    if scored:
        j = torch.tensor(scored)
        g = torch.tensor([gaps[i] for i in scored], dtype=torch.float64)
        out["idealised_ranking_accuracy"] = ((rc[j] - rr[j]) + g / beta > 0).double().mean().item()
    return out


def preference_metrics(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                       chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor,
                       reference_chosen_logps: torch.Tensor | None, reference_rejected_logps: torch.Tensor | None,
                       beta: float, score_gaps: Sequence[float | None],
                       buckets: Sequence[int | str] | None = None) -> dict[str, float]:
    """All metrics over the pairs, then ``bucket=B/metric`` for each bucket value. Inputs are (P,) tensors
    (the reference's None: reference-free metrics only)."""
    t = [x if x is None else x.double().cpu() for x in (
        policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths,
        reference_chosen_logps, reference_rejected_logps)]
    out = _metrics(*t, beta, list(score_gaps))
    if buckets is not None:
        groups: dict = defaultdict(list)
        for j, b in enumerate(buckets):
            groups[b].append(j)
        for b in sorted(groups):
            j = torch.tensor(groups[b])
            sub = [x if x is None else x[j] for x in t]
            for k, v in _metrics(*sub, beta, [score_gaps[i] for i in groups[b]]).items():
                out[f"bucket={b}/{k}"] = v
    return out
