"""The response table and the reference log-prob cache.

Our data model is responses, not pairs: every unique (prompt, response) that some
pair uses is tokenised once (``ResponseTable``) and its reference log-prob is computed
once per reference model (``RefCache``), then shared by every pair that contains it.
The cache is keyed by the reference's identity ("initial", "stage-1", ...) and kept
on disk under ``OUTPUT/refcache/`` so a resumed run never recomputes it. Because the
log-probs are computed by whichever model *is* the reference at that moment (the
initial weights, or the policy at the end of the previous stage), no second copy of
the model is held in memory during training.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from ..data.pairs import Pair, response_keys
from ..errors import CurryError
from ..io import atomic_path
from ..progress import progress_bar
from .logprobs import resolve_lm_head, response_logps, split_model
from .refstore import ReferenceStore
from .sharding import is_sharded
from .tokenize import Encoded

Key = tuple[int, int]  # (record index, response index)


@dataclass
class ResponseTable:
    keys: list[Key]
    encoded: list[Encoded]
    index: dict[Key, int]

    @classmethod
    def from_pairs(cls, pairs: Sequence[Pair], encoded_records: Sequence[Sequence[Encoded]]) -> "ResponseTable":
        keys = response_keys(pairs)
        return cls(keys, [encoded_records[r][i] for r, i in keys], {k: j for j, k in enumerate(keys)})

    def extend(self, pairs: Sequence[Pair], encoded_records: Sequence[Sequence[Encoded]], first_record: int) -> None:
        """Add the responses of ``pairs`` not in the table yet; ``encoded_records[j]`` is record
        ``first_record + j`` (records appended after the table was built: online stages)."""
        for key in response_keys(pairs):
            if key not in self.index:
                self.index[key] = len(self.keys)
                self.keys.append(key)
                self.encoded.append(encoded_records[key[0] - first_record][key[1]])

    def rows(self, pairs: Sequence[Pair]) -> tuple[list[int], list[int], list[int]]:
        """Unique table rows used by ``pairs`` and, per pair, the position of chosen/rejected in that list."""
        used = sorted({self.index[(p.record, p.chosen)] for p in pairs} |
                      {self.index[(p.record, p.rejected)] for p in pairs})
        where = {row: j for j, row in enumerate(used)}
        chosen = [where[self.index[(p.record, p.chosen)]] for p in pairs]
        rejected = [where[self.index[(p.record, p.rejected)]] for p in pairs]
        return used, chosen, rejected

    def list_rows(self, lists: Sequence) -> tuple[list[int], list[list[int]]]:
        """Unique table rows used by ranked ``lists`` and, per list, the position of each response in that list."""
        used = sorted({self.index[(x.record, i)] for x in lists for i in x.responses})
        where = {row: j for j, row in enumerate(used)}
        return used, [[where[self.index[(x.record, i)]] for i in x.responses] for x in lists]


@torch.no_grad()
def logps_for_rows(model, table: ResponseTable, rows: Sequence[int], pad_token_id: int, batch_size: int,
                   desc: str = "log-probs", progress: bool = True,
                   min_forwards: int = 0, lm_head: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts for ``rows`` of the table, in eval mode.

    Rows are batched longest-first so each batch carries little padding; results come
    back in the order of ``rows``. ``min_forwards``: run discarded forwards (on the last
    batch again) up to that many, for sharded models whose every forward is collective.
    ``lm_head``: the run's ``model.fused_logprobs``, so reference, held-out and policy share one kernel.
    """
    was_training = model.training
    model.eval()
    # longest first, the responses of one prompt kept together (packing computes their prompt once)
    longest: dict = {}
    for r in rows:
        e = table.encoded[r]
        longest[e.prompt_ids] = max(longest.get(e.prompt_ids, 0), len(e))
    order = sorted(range(len(rows)), key=lambda j: (-longest[table.encoded[rows[j]].prompt_ids],
                                                    table.encoded[rows[j]].prompt_ids, -len(table.encoded[rows[j]])))
    logps = torch.empty(len(rows), dtype=torch.float64)
    counts = torch.empty(len(rows), dtype=torch.long)
    bar = progress_bar(range(0, len(order), batch_size), desc=desc, unit="batch", enabled=progress, leave=False)
    for start in bar:
        chunk = order[start:start + batch_size]
        lp, n = response_logps(model, [table.encoded[rows[j]] for j in chunk], pad_token_id, lm_head=lm_head)
        logps[chunk] = lp.double().cpu()
        counts[chunk] = n.cpu()
    for _ in range(min_forwards - math.ceil(len(order) / batch_size)):
        response_logps(model, [table.encoded[rows[j]] for j in chunk], pad_token_id, lm_head=lm_head)
    model.train(was_training)
    return logps, counts


def shard_rows(table: ResponseTable, rows: Sequence[int], num_processes: int) -> list[list[int]]:
    """Split ``rows`` over processes: a prompt's responses stay together (packing computes the prompt
    once), shards balanced by tokens. Deterministic, so every process computes the same split."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for r in rows:
        groups.setdefault(table.encoded[r].prompt_ids, []).append(r)
    shards: list[list[int]] = [[] for _ in range(num_processes)]
    load = [0] * num_processes
    for g in sorted(groups.values(), key=lambda g: (-sum(len(table.encoded[r]) for r in g), g[0])):
        k = min(range(num_processes), key=lambda i: (load[i], i))
        shards[k].extend(g)
        load[k] += sum(len(table.encoded[r]) for r in g)
    return shards


def logps_for_rows_shared(accelerator, model, table: ResponseTable, rows: Sequence[int], pad_token_id: int,
                          batch_size: int, desc: str = "log-probs",
                          progress: bool = True, lm_head: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """`logps_for_rows` with the work split over the processes and the results gathered on every one.

    ``model`` must be the unwrapped module: the processes run different numbers of forwards,
    so none may take part in a collective (DDP's buffer broadcast would). A sharded (FSDP2)
    model's every forward is a collective (it all-gathers the weights), so there each process
    runs as many forwards as the busiest one, the extra ones discarded. The forwards run under
    ``accelerator.autocast()``, as the policy's do in training (`training/precision.py`).
    """
    W = 1 if accelerator is None else accelerator.num_processes
    if W == 1:
        with contextlib.nullcontext() if accelerator is None else accelerator.autocast():
            return logps_for_rows(model, table, rows, pad_token_id, batch_size, desc=desc, progress=progress,
                                  lm_head=lm_head)
    from accelerate.utils import gather_object

    shards = shard_rows(table, rows, W)
    mine, forwards = shards[accelerator.process_index], 0
    if is_sharded(model):
        mine = mine or list(rows[:1])  # a process without rows still joins every forward
        forwards = max(math.ceil(len(s) / batch_size) for s in shards)
    with accelerator.autocast():
        lp, n = logps_for_rows(model, table, mine, pad_token_id, batch_size, desc=desc, progress=progress,
                               min_forwards=forwards, lm_head=lm_head)
    got = {r: (v, c) for r, v, c in gather_object(list(zip(mine, lp.tolist(), n.tolist())))}
    return (torch.tensor([got[r][0] for r in rows], dtype=torch.float64),
            torch.tensor([got[r][1] for r in rows], dtype=torch.long))


class RefCache:
    """Reference log-probs per table row, per reference identity; persisted in ``directory``."""

    def __init__(self, directory: str | None, write: bool = True):
        self.directory = directory
        self.write = write  # False on non-main processes: they read the cache but never write it
        self.values: dict[str, torch.Tensor] = {}  # key -> (len(table),) float64, NaN = not computed

    def _path(self, key: str) -> str | None:
        return os.path.join(self.directory, f"{key}.pt") if self.directory else None

    def get(self, key: str, size: int) -> torch.Tensor:
        if key not in self.values:
            path = self._path(key)
            if path and os.path.exists(path):
                try:
                    self.values[key] = torch.load(path, weights_only=True)  # never unpickles code
                except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
                    # not recomputed: a stage's policy that made it may be gone (trained on since)
                    raise CurryError(f"{path} is damaged ({type(e).__name__}); delete the run directory's "
                                     f"refcache/ and state/ and train again") from None
            else:
                self.values[key] = torch.full((size,), math.nan, dtype=torch.float64)
        if len(self.values[key]) < size:  # the table grew (online stages): new rows are not computed yet
            grown = torch.full((size - len(self.values[key]),), math.nan, dtype=torch.float64)
            self.values[key] = torch.cat([self.values[key], grown])
        return self.values[key]

    def ensure(self, key: str, model, table: ResponseTable, rows: Sequence[int], scorer: "Scorer",
               shared: "ReferenceStore | None" = None) -> torch.Tensor:
        """Compute the missing rows with ``model`` (which must be the reference ``key``) and save.

        With several processes (the scorer's accelerator), each computes its share of the rows and all
        receive every value: the reference pass takes 1/W of the time instead of all of it. ``shared``: the
        store of this reference across runs (`refstore`); rows found there are not scored again.
        """
        values = self.get(key, len(table.keys))
        missing = [r for r in rows if math.isnan(values[r])]
        if missing and shared is not None:
            found = shared.lookup([table.encoded[r] for r in missing], scorer.accelerator)
            values[[r for r, v in zip(missing, found) if v is not None]] = \
                torch.tensor([v for v in found if v is not None], dtype=torch.float64)
            if len(missing) > found.count(None):
                self.save(key)
            missing = [r for r, v in zip(missing, found) if v is None]
        if missing:
            lp, _ = scorer.score(model, table, missing, desc=f"reference log-probs ({key})")
            bad = [table.keys[missing[j]] for j in range(len(missing)) if not math.isfinite(lp[j])]
            if bad:
                raise CurryError(f"reference '{key}' gives a non-finite log-prob to {len(bad)} responses "
                                 f"(first: record {bad[0][0]}, response {bad[0][1]}); a token has zero "
                                 f"probability under the reference — check the tokenizer/model pair")
            values[missing] = lp
            self.save(key)
            if shared is not None and self.write:
                shared.add([table.encoded[r] for r in missing], lp.tolist())
        return values

    def require(self, key: str, size: int, rows: Sequence[int]) -> torch.Tensor:
        """The values of ``rows``, which must have been computed already (the model that made them is gone)."""
        values = self.get(key, size)
        missing = [r for r in rows if math.isnan(values[r])]
        if missing:
            raise CurryError(f"reference '{key}' has no log-prob for {len(missing)} responses a stage uses; its "
                             f"model is no longer loaded (a bug in training/refplan.py: please report it)")
        return values

    def save(self, key: str) -> None:
        path = self._path(key)
        if path and self.write:
            os.makedirs(self.directory, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save(self.values[key], tmp)


@dataclass(frozen=True)
class Scorer:
    """A run's one log-prob function, fixed when the model is loaded: the LM-head kernel (resolved, never
    ``auto``), packing, the pad token and the accelerator (autocast, work split over processes). The
    policy's training forward, every reference pass, the held-out metrics and dynamic difficulty all go
    through it, so policy and reference are computed alike."""

    accelerator: object
    pad_token_id: int
    lm_head: str
    batch_size: int  # sequences per no-grad forward
    progress: bool = False

    @classmethod
    def for_model(cls, model, pad_token_id: int, fused_logprobs: str, device: torch.device, accelerator=None,
                  batch_size: int = 16, progress: bool = False) -> "Scorer":
        """The scorer of ``model``: ``model.fused_logprobs`` resolved against its LM head on ``device``
        (`logprobs.resolve_lm_head`; call before sharding or LoRA wrap the head)."""
        split = split_model(model)
        lm_head = resolve_lm_head(fused_logprobs, None if split is None else split[1], device)
        return cls(accelerator, pad_token_id, lm_head, batch_size, progress)

    def policy(self, model, encoded: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """The training forward (gradients flow) of ``encoded`` sequences, under the run's autocast."""
        with self.accelerator.autocast():
            return response_logps(model, list(encoded), self.pad_token_id, lm_head=self.lm_head)

    def score(self, model, table: ResponseTable, rows: Sequence[int],
              desc: str = "log-probs") -> tuple[torch.Tensor, torch.Tensor]:
        """No-grad log-probs of table ``rows`` (``model`` unwrapped), split over the processes."""
        return logps_for_rows_shared(self.accelerator, model, table, rows, self.pad_token_id, self.batch_size,
                                     desc=desc, progress=self.progress, lm_head=self.lm_head)
