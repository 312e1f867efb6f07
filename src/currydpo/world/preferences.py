"""Preference data made the UltraFeedback way, inside the embedded world.

For each prompt the SFT model samples N responses (batched ``generate`` through the
chat template, seeded); a noisy judge rates each on four aspects, 1..5, from the gold
components (`language.gold_components`) plus independent Gaussian noise; the mean of
the four aspect ratings is the judge's score (``fine-grained_score``), as in
UltraFeedback (Cui et al. 2023) and the Curry-DPO paper's figure.

Aspect <- gold quantity (all in [0, 1]), rating = clip(round(1 + 4 v + noise), 1, 5):

- helpfulness            <- the gold reward itself
- instruction_following  <- topic x length (answers what was asked, at the asked size)
- truthfulness           <- correct (right items / tone / sum)
- honesty                <- form (stands in for "no made-up text": parses, no repetition)

``overall_score`` is 2 x the fine-grained mean (the 1..10 scale of openbmb's critique
score). The layout is openbmb/UltraFeedback's, one JSON object per line, with the writer
of each completion in its ``model`` field: ``sft`` in the ``self`` regime (all 4 answers
sampled from the SFT model), a pool member's name in the ``pool`` regime (`pool.py`).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from typing import Callable

import torch

from ..io import write_jsonl
from .language import combine, gold_components

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def aspect_values(components: dict[str, float]) -> dict[str, float]:
    """The four UltraFeedback aspects as gold quantities in [0, 1] (see module docstring)."""
    return {
        "helpfulness": combine(components),
        "honesty": components["form"],
        "instruction_following": components["topic"] * components["length"],
        "truthfulness": components["correct"],
    }


def rate(prompt: str, response: str, rng: random.Random, rater_noise: float = 0.5) -> dict[str, int]:
    """Noisy 1..5 aspect ratings of one response; ``rater_noise`` is the noise s.d. in rating points."""
    values = aspect_values(gold_components(prompt, response))
    out = {}
    for a in ASPECTS:
        r = 1.0 + 4.0 * values[a] + rng.gauss(0.0, rater_noise)
        out[a] = int(min(5, max(1, math.floor(r + 0.5))))
    return out


def judge_score(prompt: str, response: str, rater_noise: float = 0.5) -> float:
    """The world's noisy judge as a pointwise function (``gold:currydpo.world.preferences:judge_score``):
    the mean of the four `rate` aspect ratings, 1..5, with the noise seeded by (prompt, response), so an
    answer always gets the same rating (a judge cache and a resumed run agree)."""
    seed = int(hashlib.sha256(f"{prompt}\x00{response}".encode("utf-8")).hexdigest()[:16], 16)
    ratings = rate(prompt, response, random.Random(seed), rater_noise)
    return sum(ratings.values()) / len(ratings)


def ultrafeedback_row(prompt: str, responses: list[str], rng: random.Random, rater_noise: float = 0.5,
                      models: list[str] | None = None) -> dict:
    """One openbmb/UltraFeedback-layout row for ``prompt`` and its rated ``responses`` (written by ``models``)."""
    models = models or ["sft"] * len(responses)
    completions = []
    for text, model in zip(responses, models):
        ratings = rate(prompt, text, rng, rater_noise)
        mean = sum(ratings.values()) / len(ratings)
        completions.append({
            "model": model,
            "response": text,
            "annotations": {a: {"Rating": str(ratings[a]), "Rationale": ""} for a in ASPECTS},
            "fine-grained_score": mean,
            "overall_score": 2.0 * mean,
            "custom_system_prompt": "",
            "principle": "helpfulness",
        })
    return {
        "source": "currydpo-world",
        "instruction": prompt,
        "models": list(models),
        "completions": completions,
        "prompt_id": hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16],
    }


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[str], *, n_responses: int = 4, seed: int = 0,
                     temperature: float = 1.0, max_new_tokens: int = 48, batch_size: int = 64,
                     progress: Callable | None = None) -> list[list[str]]:
    """``n_responses`` sampled answers per prompt (pure ancestral sampling: no top-k / top-p)."""
    model.eval()
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed * 1_000_003 + start)  # batch-keyed: resuming a batch gives the same samples
        gen = model.generate(
            **enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            num_return_sequences=n_responses, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )  # (B * n_responses, T)
        new = gen[:, enc["input_ids"].shape[1]:]
        decoded = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        out.extend(decoded[i * n_responses:(i + 1) * n_responses] for i in range(len(chunk)))
        if progress is not None:
            progress(len(chunk))
    return out


def make_preference_data(model_dir: str | os.PathLike, prompts: list[str], out_path: str | os.PathLike, *,
                         n_responses: int = 4, rater_noise: float = 0.5, seed: int = 0, temperature: float = 1.0,
                         max_new_tokens: int = 48, batch_size: int = 64, progress: bool = False,
                         responses: str = "self", early_state: dict | None = None) -> str:
    """Write, rate and save UltraFeedback-layout preference data for ``prompts``; returns ``out_path``.

    ``responses``: ``self`` samples every answer from the SFT model at ``temperature``;
    ``pool`` takes each prompt's answers from distinct `pool.POOL` members (``early_state``:
    the early SFT checkpoint's weights, for the pool's early writer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .pool import assign_writers, write_answers

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(prompts) * (n_responses if responses == "pool" else 1)
        bar = tqdm(total=total, desc=f"world: writing responses ({responses})", unit="answer" if
                   responses == "pool" else "prompt")
    tick = bar.update if bar is not None else None
    if responses == "pool":
        early = AutoModelForCausalLM.from_pretrained(model_dir)
        if early_state is not None:
            early.load_state_dict(early_state)
        assignment = assign_writers(len(prompts), n_responses, random.Random(f"pool-{seed}"))
        texts = write_answers(prompts, assignment, {"final": (model, tokenizer), "early": (early, tokenizer)},
                              seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              sample=sample_responses, progress=tick)
        writers = [[w.name for w in ws] for ws in assignment]
    else:
        texts = sample_responses(model, tokenizer, prompts, n_responses=n_responses, seed=seed,
                                 temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 progress=tick)
        writers = [["sft"] * len(ts) for ts in texts]
    if bar is not None:
        bar.close()
    rng = random.Random(f"rater-{seed}")
    # Like UltraFeedback's own pipeline, keep only real completions: an empty sample (EOS at
    # once) is not a rated answer, and a prompt needs two distinct answers to give a pair.
    kept = []
    for p, ts, ws in zip(prompts, texts, writers):
        pairs = [(t, w) for t, w in zip(ts, ws) if t]
        if len({t for t, _ in pairs}) >= 2:
            kept.append((p, [t for t, _ in pairs], [w for _, w in pairs]))
    write_jsonl(out_path, (ultrafeedback_row(p, ts, rng, rater_noise, ws) for p, ts, ws in kept))
    return str(out_path)
