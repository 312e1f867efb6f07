"""What a run trains on, pairs or ranked lists, behind the same four operations.

The stage loop sees one `Objective`: ``rows`` (the response-table rows some items use, each
once), ``inputs`` (the loss inputs from those rows' log-probs), ``loss`` (scalar, metrics,
per-item losses) and ``micro_batches`` (one update's items in token-bounded micro-batches).
`PairObjective` serves the pairwise losses, `ListObjective` the listwise ones (PRO,
Plackett-Luce, LiPO over each prompt's ranked list); ``train_step`` has no branch on which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..curriculum.lists import RankedList
from ..data.pairs import Pair
from ..losses import ListLogps, PairLogps, list_loss, mrpo_reference, pair_loss
from ..losses.registry import Reduced
from .memory import split_by_tokens
from .responses import ResponseTable


@dataclass
class PairObjective:
    """Pairwise losses: items are indices into ``pairs`` (the run's training pairs)."""

    pairs: list[Pair]
    table: ResponseTable
    loss_cfg: object  # config.LossConfig
    mrpo_eta: float = 0.1
    unit: str = "pair"

    def items(self, idx: list[int]) -> list[Pair]:
        return [self.pairs[i] for i in idx]

    def rows(self, items: list[Pair]) -> tuple[list[int], tuple[list[int], list[int]]]:
        """Unique table rows and, per pair, the positions of its chosen and rejected response among them."""
        rows, ci, ri = self.table.rows(items)
        return rows, (ci, ri)

    def inputs(self, lp: Tensor, n: Tensor, where, items: list[Pair], ref: Tensor | None) -> PairLogps:
        """``lp``/``n``: log-probs and lengths of ``rows``; ``ref``: the reference log-probs of those rows,
        (R,) or (K, R) for several references (MRPO, combined here), None for reference-free losses."""
        ci, ri = (torch.tensor(v, device=lp.device) for v in where)
        ref_c = ref_r = None
        if ref is not None:
            ref_c, ref_r = ref[..., ci.cpu()], ref[..., ri.cpu()]
            if ref.dim() == 2:
                ref_c, ref_r = mrpo_reference(ref_c, ref_r, eta=self.mrpo_eta)
        gaps = [p.score_gap for p in items]
        return PairLogps(
            policy_chosen_logps=lp[ci], policy_rejected_logps=lp[ri],
            chosen_lengths=n[ci].to(lp.dtype), rejected_lengths=n[ri].to(lp.dtype),
            reference_chosen_logps=None if ref_c is None else ref_c.to(lp),
            reference_rejected_logps=None if ref_r is None else ref_r.to(lp),
            score_gaps=None if any(g is None for g in gaps) else torch.tensor(gaps, dtype=lp.dtype, device=lp.device),
        )

    def loss(self, x: PairLogps) -> Reduced:
        lo = self.loss_cfg
        return pair_loss(lo.name, x, beta=lo.beta, loss_weights=lo.weights, wpo=lo.wpo, rpo_alpha=lo.rpo_alpha,
                         **lo.options())

    def micro_batches(self, idx: list[int], max_tokens: int) -> list[list[int]]:
        """One update's pairs in micro-batches of at most ``max_tokens`` (a prompt's pairs kept together)."""
        return split_by_tokens(idx, self.pairs, self.table, max_tokens)


@dataclass
class ListObjective:
    """Listwise losses: items are indices into ``lists`` (each stage's pairs regrouped by prompt)."""

    lists: list[RankedList]
    table: ResponseTable
    loss_cfg: object  # config.LossConfig
    unit: str = "list"

    def items(self, idx: list[int]) -> list[RankedList]:
        return [self.lists[i] for i in idx]

    def rows(self, items: list[RankedList]) -> tuple[list[int], list[list[int]]]:
        """Unique table rows and, per list, the position of each of its responses among them."""
        return self.table.list_rows(items)

    def inputs(self, lp: Tensor, n: Tensor, where, items: list[RankedList], ref: Tensor | None) -> ListLogps:
        """The lists padded to (L, N); padding repeats a list's first response and is masked out."""
        N = max(len(w) for w in where)
        pos = torch.tensor([w + [w[0]] * (N - len(w)) for w in where], device=lp.device)
        mask = torch.tensor([[j < len(w) for j in range(N)] for w in where], device=lp.device)

        def pad(values, fill):
            return torch.tensor([v + [fill] * (N - len(v)) for v in values], device=lp.device)

        return ListLogps(
            policy_logps=lp[pos], lengths=n[pos].to(lp.dtype), ranks=pad([x.ranks for x in items], 10**6),
            mask=mask, reference_logps=None if ref is None else ref[pos.cpu()].to(lp),
            labels=pad([x.labels for x in items], 0.0).to(lp.dtype),
        )

    def loss(self, x: ListLogps) -> Reduced:
        lo = self.loss_cfg
        return list_loss(lo.name, x, beta=lo.beta, loss_weights=lo.weights, **lo.options())

    def micro_batches(self, idx: list[int], max_tokens: int) -> list[list[int]]:
        """One update's lists in micro-batches of at most ``max_tokens``; a list is never split (the loss needs
        all of it), an oversize list goes alone."""
        return split_by_tokens(idx, self.lists, self.table, max_tokens)
