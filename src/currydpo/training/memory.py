"""Memory policy: when to turn on gradient checkpointing, and token-bounded micro-batches.

``model.gradient_checkpointing: auto`` compares an estimate of the activations autograd keeps
for the largest micro-batch with a budget (``model.memory_budget_gb``; default: this
process's share of the device's free memory, less the gradients and AdamW state still to be
allocated) and turns checkpointing on only when they do not fit: it costs one more forward of
every decoder layer in the backward (about a third more compute), so it is not worth paying
when memory is plentiful (the charter: no gradient checkpointing by default on CPU).

``optim.max_tokens_per_micro_batch`` splits an update's pairs (or, for a listwise loss, its
ranked lists, each kept whole) into micro-batches of bounded tokens; `train_step` weights each
micro-batch's loss by its share of the update's items, so the update equals the whole batch's.
Its ``auto`` (ours) depends on the device: a CPU's matmuls are no faster on long micro-batches
than on short ones, so the bound is small (768 tokens: the lowest peak we measured on
SmolLM2-135M, at 0.82-1.01x the unbounded pairs/s, docs/performance.md); a GPU needs
long ones to be busy, so the bound is as large as half the budget allows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

from ..curriculum.lists import RankedList
from ..data.pairs import Pair
from .responses import ResponseTable

GB = 2 ** 30


def activation_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Activations a decoder layer keeps for backward, per token, times the layers: about 12·H + 5·I
    elements per layer for a Llama-style block (norm inputs and outputs, q/k/v, rotary copies,
    attention output, o_proj input; gate, up, SiLU in and out, their product). A rough estimate
    (sdpa/flex keep no L×L probabilities); the benchmark's measurement is in docs/performance.md."""
    H = config.hidden_size
    intermediate = getattr(config, "intermediate_size", None) or 4 * H
    return (12 * H + 5 * intermediate) * config.num_hidden_layers * torch.finfo(dtype).bits // 8


def micro_batch_tokens(table: ResponseTable, batch_size: int, max_tokens: int | None, per_item: int = 2) -> int:
    """Upper bound on the tokens of one micro-batch: ``per_item``·batch_size of the longest sequences (no
    prompt shared; ``per_item`` is 2 for pairs, the longest list's size for ranked lists), or ``max_tokens``
    when micro-batches are bounded by it and one item fits."""
    longest = sorted((len(e) for e in table.encoded), reverse=True)
    bound = sum(longest[:per_item * batch_size])
    if max_tokens is not None:
        bound = min(bound, max(max_tokens, sum(longest[:per_item])))  # an item that does not fit goes alone
    return bound


def free_memory_share(device: torch.device) -> int:
    """Free memory of ``device`` (CUDA: the GPU's; CPU: the machine's available RAM, split among this
    node's processes)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


@dataclass
class Checkpointing:
    """What ``model.gradient_checkpointing`` resolved to, and why (logged and kept in summary.json)."""

    on: bool
    mode: str
    activation_gb: float
    budget_gb: float

    def describe(self) -> str:
        how = "forced by model.gradient_checkpointing" if self.mode != "auto" else (
            "estimated activations exceed the budget" if self.on else "estimated activations fit the budget")
        return (f"gradient checkpointing {'on' if self.on else 'off'} ({how}: {self.activation_gb:.2f} GB per "
                f"micro-batch vs a budget of {self.budget_gb:.2f} GB)")


def memory_budget(model, device: torch.device, budget_gb: float | None) -> int:
    """Bytes the activations may take: ``model.memory_budget_gb``, or this process's share of the device's
    free memory less the fp32 gradients and two AdamW moments still to be allocated."""
    if budget_gb is not None:
        return int(budget_gb * GB)
    # this process's elements: under FSDP2 a parameter is a DTensor whose numel() is the whole tensor's
    trainable = sum((p.to_local() if hasattr(p, "to_local") else p).numel()
                    for p in model.parameters() if p.requires_grad)
    return free_memory_share(device) - 3 * 4 * trainable


def text_config(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config


CPU_TOKENS = 768  # measured: 0.36x the unbounded peak RSS at 1.30x its pairs/s (SmolLM2-135M, fp32)
CUDA_TOKENS = (2048, 16384)  # below 2048 a GPU idles; above 16384 the gain is small and one step is long


def resolve_token_bound(setting: int | str | None, model, device: torch.device, budget: int,
                        compute_dtype: torch.dtype) -> int | None:
    """``optim.max_tokens_per_micro_batch`` as a number (see module doc); an explicit number or null as given.
    ``compute_dtype`` is what activations are kept in (bf16 under bf16 autocast, though the weights are fp32)."""
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return CPU_TOKENS
    per_token = activation_bytes_per_token(text_config(model), compute_dtype)
    fits = max(budget, 0) // 2 // per_token // 1024 * 1024
    return min(max(fits, CUDA_TOKENS[0]), CUDA_TOKENS[1])


def choose_checkpointing(mode: str, model, table: ResponseTable, batch_size: int, max_tokens: int | None,
                         budget: int, compute_dtype: torch.dtype, per_item: int = 2) -> Checkpointing:
    """Resolve ``model.gradient_checkpointing`` (see module doc) for micro-batches of at most ``max_tokens``
    of items of up to ``per_item`` sequences."""
    per_token = activation_bytes_per_token(text_config(model), compute_dtype)
    activations = per_token * micro_batch_tokens(table, batch_size, max_tokens, per_item)
    on = mode == "on" or (mode == "auto" and activations > budget)
    return Checkpointing(on, mode, activations / GB, budget / GB)


def enable_checkpointing(model) -> None:
    """transformers' per-decoder-layer checkpointing, non-reentrant (works with LoRA's frozen inputs and
    with our backbone/LM-head split, whose backbone call runs the checkpointed layers)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def unique_rows(table: ResponseTable, items: Sequence[Pair | RankedList]) -> list[int]:
    """Table rows ``items`` use, each once: the pairs' chosen and rejected, or every response of ranked lists."""
    return (table.list_rows if isinstance(items[0], RankedList) else table.rows)(items)[0]


def split_by_tokens(idx: list[int], items: Sequence[Pair | RankedList], table: ResponseTable,
                    max_tokens: int) -> list[list[int]]:
    """Split one update's items (indices into ``items``: pairs, or ranked lists for a listwise loss) into
    micro-batches of at most ``max_tokens``.

    Tokens are counted as the packed path computes them: each prompt once, each unique response
    once. A prompt's items stay together when they fit (so its prompt is computed once); a prompt
    whose items do not fit is split item by item, and an item longer than ``max_tokens`` goes alone.
    An item is never split: a listwise loss needs the whole list in one forward. The items are the
    update's, in first-come order of their prompts.
    """
    by_prompt: dict[int, list[int]] = {}
    for i in idx:
        by_prompt.setdefault(items[i].record, []).append(i)

    def tokens(group: list[int]) -> int:
        rows = unique_rows(table, [items[i] for i in group])
        prompts = {table.encoded[r].prompt_ids for r in rows}
        return sum(len(p) for p in prompts) + sum(len(table.encoded[r].response_ids) for r in rows)

    micro: list[list[int]] = [[]]
    for group in by_prompt.values():
        pieces = [group] if tokens(group) <= max_tokens else [[i] for i in group]
        for piece in pieces:
            if micro[-1] and tokens(micro[-1] + piece) > max_tokens:
                micro.append([])
            micro[-1].extend(piece)
    return micro


def even_out(micro: list[list[int]], n: int) -> list[list[int]]:
    """Split the micro-batches with the most items (pairs or lists) in halves until there are ``n`` of them.

    With several processes every process must run the same number of forwards and backwards
    (DDP's and FSDP's collectives pair them up across processes), but token-bounded splits of
    different items differ in count; each process holds the same number of items, so the process
    with the most micro-batches has at least as many items as micro-batches, and so has every other.
    A micro-batch is split between items, never inside a list.
    """
    micro = [m for m in micro if m]
    while len(micro) < n:
        j = max(range(len(micro)), key=lambda i: len(micro[i]))
        if len(micro[j]) < 2:
            raise ValueError(f"cannot split {sum(map(len, micro))} items into {n} micro-batches")
        half = len(micro[j]) // 2
        micro[j:j + 1] = [micro[j][:half], micro[j][half:]]
    return micro
