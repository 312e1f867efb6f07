"""A pool of answer writers of graded quality, as UltraFeedback has.

UltraFeedback (Cui et al. 2023) rates 4 answers per prompt written by 4 different
models drawn from a pool of 17 of very different quality; the Curry-DPO paper's pairs
come from that data. Sampling all 4 answers from one SFT model (the world's ``self``
regime) gives much closer answers: many (R1,R2) pairs are near-ties. The ``pool``
regime gives the world its own pool, and each prompt 4 answers from 4 distinct members:

- rule-based writers (`language.sample_response`) with a fixed quality: each flaw
  (wrong content, off-topic, rambling, repetition, truncation, ...) is drawn with a
  probability proportional to 1 - quality, so the error rate is controlled;
- the world's SFT model sampled at three temperatures (sharper is better here);
- an early SFT checkpoint (`EARLY_FRACTION` of the SFT steps): a weaker model.

Members, qualities and temperatures are our choice; the gold reward of each member's
answers is measured in the world's ``meta.json`` (``data.writer_gold_mean``) so the
grading is visible, not assumed. The same noisy judge rates every answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from . import language


@dataclass(frozen=True)
class Writer:
    """One pool member: a rule-based writer (``quality`` set) or an SFT checkpoint sampled at ``temperature``."""

    name: str
    quality: float | None = None   # rule-based: flaw probabilities scale with 1 - quality
    checkpoint: str = "final"      # SFT: "final" or "early"
    temperature: float = 1.0

    @property
    def is_rules(self) -> bool:
        return self.quality is not None


# Our choice: 8 members spanning mean gold reward ~0.2 .. ~0.85 (UltraFeedback: 17 models).
POOL = (
    Writer("rules-q0.9", quality=0.9),
    Writer("rules-q0.7", quality=0.7),
    Writer("rules-q0.5", quality=0.5),
    Writer("rules-q0.3", quality=0.3),
    Writer("sft-t0.7", temperature=0.7),
    Writer("sft-t1.0", temperature=1.0),
    Writer("sft-t1.3", temperature=1.3),
    Writer("sft-early-t1.0", checkpoint="early", temperature=1.0),
)
EARLY_FRACTION = 0.2  # the early checkpoint: after this share of the SFT steps


def assign_writers(n_prompts: int, n_responses: int, rng: random.Random,
                   pool: tuple[Writer, ...] = POOL) -> list[list[Writer]]:
    """For each prompt, ``n_responses`` distinct pool members drawn uniformly (seeded)."""
    if n_responses > len(pool):
        raise ValueError(f"{n_responses} responses per prompt need at least that many writers; the pool has "
                         f"{len(pool)}")
    return [rng.sample(pool, n_responses) for _ in range(n_prompts)]


def write_answers(prompts: list[str], assignment: list[list[Writer]], models: dict, *, seed: int,
                  max_new_tokens: int, batch_size: int, sample: Callable,
                  progress: Callable | None = None) -> list[list[str]]:
    """Each prompt's answers, slot j written by ``assignment[i][j]``.

    ``models`` maps a checkpoint name to ``(model, tokenizer)``; ``sample`` is
    `preferences.sample_responses`. Each member writes all its prompts in one batched
    pass, with its own seed, so adding a member does not change the others' answers.
    """
    answers: list[list[str]] = [[""] * len(ws) for ws in assignment]
    members = sorted({w for ws in assignment for w in ws}, key=lambda w: w.name)
    for k, writer in enumerate(members):
        slots = [(i, j) for i, ws in enumerate(assignment) for j, w in enumerate(ws) if w == writer]
        if writer.is_rules:
            rng = random.Random(f"writer-{writer.name}-{seed}")
            for i, j in slots:
                answers[i][j] = language.sample_response(prompts[i], rng, writer.quality)
            if progress is not None:
                progress(len(slots))
            continue
        model, tokenizer = models[writer.checkpoint]
        texts = sample(model, tokenizer, [prompts[i] for i, _ in slots], n_responses=1, seed=seed * 101 + k + 1,
                       temperature=writer.temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=progress)
        for (i, j), (text,) in zip(slots, texts):
            answers[i][j] = text
    return answers
