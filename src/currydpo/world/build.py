"""Build (once) and cache the embedded offline world.

A world is a directory holding:

- ``sft_model/``   tokenizer (BPE trained on the language) + tiny Llama trained from scratch
                   by next-token SFT on chat-formatted (prompt, response) pairs of varied
                   quality, loss on response tokens only; ``save_pretrained`` layout;
- ``train.jsonl``  UltraFeedback-layout preference data: 4 answers per training prompt rated
                   1..5 by a noisy judge (`preferences.make_preference_data`), written by 4
                   distinct members of a pool of writers of graded quality (``pool``, the
                   paper's UltraFeedback regime, `pool.py`) or sampled from the SFT model
                   itself (``self``, on-policy);
- ``eval_prompts.jsonl``  held-out prompts (``{"prompt": ...}``), disjoint from the SFT and
                   preference prompts;
- ``meta.json``    the world's config, seed, build timings, SFT loss before/after, the
                   SFT samples' gold reward and the rating distribution. Written last.

The directory is built in a temporary sibling and swapped in (`io.atomic_dir`), so an
interrupted build never leaves half a world; a complete one is reused. Where it lives:
``<cache_dir or $CURRYDPO_CACHE or ~/.cache/currydpo>/world-<version>-<responses>-<seed>[-quick]``
(plus a hash suffix when sizes are overridden): the two response regimes, and worlds of
older versions, never share a directory. Nothing here knows which training arm
will be run on the world.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import CurryError
from ..io import atomic_dir, write_json, write_jsonl
from . import language
from .pool import EARLY_FRACTION
from .preferences import ASPECTS, make_preference_data
from .tiny import make_llama, make_tokenizer

WORLD_VERSION = "4"  # 4: the response regime (pool | self) is part of the world


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of one world. Two presets: `DEFAULT` (about 2 minutes on 2 cores) and `QUICK` (about 30 s)."""

    vocab_size: int = 640           # BPE vocabulary (the language has ~155 words)
    hidden: int = 96                # Llama hidden size
    layers: int = 3                 # transformer blocks
    heads: int = 4                  # attention heads
    intermediate: int = 256         # MLP width
    max_positions: int = 128        # context length (prompt + answer fit in ~60 tokens)
    n_sft_examples: int = 8000      # distinct (prompt, response) SFT examples
    quality_low: float = 0.2        # SFT answer quality ~ Uniform(quality_low, 1)
    sft_steps: int = 700            # optimiser steps
    batch_size: int = 32            # SFT batch size
    lr: float = 3e-3                # AdamW peak learning rate (warm-up 5%, cosine to 10%)
    n_train_prompts: int = 600      # prompts with 4 rated responses each
    n_eval_prompts: int = 300       # held-out prompts
    n_responses: int = 4            # responses per training prompt
    rater_noise: float = 0.5        # judge noise s.d., rating points
    temperature: float = 1.0        # sampling temperature for the responses
    max_new_tokens: int = 48        # response length cap when sampling
    gen_batch_size: int = 32        # prompts per generate call
    responses: str = "pool"         # pool: 4 distinct writers per prompt (UltraFeedback) | self: 4 SFT samples


DEFAULT = WorldConfig()
QUICK = WorldConfig(vocab_size=512, hidden=80, layers=3, heads=4, intermediate=224, n_sft_examples=4000,
                    sft_steps=350, lr=5e-3, n_train_prompts=100, n_eval_prompts=32)


@dataclass(frozen=True)
class WorldPaths:
    root: Path
    sft_model: Path
    train_data: Path
    eval_prompts: Path
    meta: Path

    @classmethod
    def at(cls, root: Path) -> "WorldPaths":
        return cls(root=root, sft_model=root / "sft_model", train_data=root / "train.jsonl",
                   eval_prompts=root / "eval_prompts.jsonl", meta=root / "meta.json")


RESPONSES = ("pool", "self")


def world_dir(cache_dir: str | os.PathLike | None, seed: int, quick: bool, config: WorldConfig) -> Path:
    base = Path(cache_dir or os.environ.get("CURRYDPO_CACHE") or Path.home() / ".cache" / "currydpo").expanduser()
    name = f"world-{WORLD_VERSION}-{config.responses}-{seed}" + ("-quick" if quick else "")
    if config != dataclasses.replace(QUICK if quick else DEFAULT, responses=config.responses):
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:8]
        name += f"-{digest}"
    return base / name


def is_complete(paths: WorldPaths, config: WorldConfig | None = None) -> bool:
    """A world is complete when its meta says so (meta is written last) and its files exist."""
    try:
        meta = json.loads(paths.meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    ok = meta.get("complete") is True and meta.get("version") == WORLD_VERSION
    if config is not None:
        ok = ok and meta.get("config") == dataclasses.asdict(config)
    files = (paths.train_data, paths.eval_prompts, paths.sft_model / "config.json")
    return ok and all(f.exists() for f in files)


def build_world(cache_dir: str | None = None, *, seed: int = 0, quick: bool = False, force: bool = False,
                progress: bool = True, responses: str = "pool", sft_steps: int | None = None,
                n_sft_examples: int | None = None, n_train_prompts: int | None = None,
                n_eval_prompts: int | None = None) -> WorldPaths:
    """Return the cached world for (``seed``, ``quick``, ``responses``, overrides), building it first if needed."""
    if responses not in RESPONSES:
        raise CurryError(f"build_world: responses={responses!r} is not valid; choose one of: {', '.join(RESPONSES)}")
    config = dataclasses.replace(QUICK if quick else DEFAULT, responses=responses)
    overrides = {k: v for k, v in dict(sft_steps=sft_steps, n_sft_examples=n_sft_examples,
                                       n_train_prompts=n_train_prompts, n_eval_prompts=n_eval_prompts).items()
                 if v is not None}
    for k, v in overrides.items():
        if not isinstance(v, int) or v < 1:
            raise CurryError(f"build_world: {k}={v!r} must be a positive integer")
    config = dataclasses.replace(config, **overrides)
    n_prompts = config.n_train_prompts + config.n_eval_prompts
    if n_prompts > 0.8 * language.prompt_space_size():
        raise CurryError(f"build_world: {n_prompts} train+eval prompts is too many for the language's "
                         f"{language.prompt_space_size()} distinct prompts; ask for at most "
                         f"{int(0.8 * language.prompt_space_size())}")
    paths = WorldPaths.at(world_dir(cache_dir, seed, quick, config))
    if not force and is_complete(paths, config):
        return paths
    with atomic_dir(paths.root) as tmp:
        _build_into(WorldPaths.at(tmp), config, seed, quick, progress)
    return paths


def _build_into(paths: WorldPaths, config: WorldConfig, seed: int, quick: bool, progress: bool) -> None:
    t0 = time.perf_counter()
    rng = random.Random(f"world-{seed}")

    # --- prompts: eval first, held out of everything else ---------------------------
    eval_prompts = language.sample_prompts(config.n_eval_prompts, rng)
    train_prompts = language.sample_prompts(config.n_train_prompts, rng, exclude=set(eval_prompts))
    held_out = set(eval_prompts)

    # --- SFT examples of varied quality ------------------------------------------------
    examples = []
    while len(examples) < config.n_sft_examples:
        p = language.sample_prompt(rng)
        if p in held_out:
            continue
        q = rng.uniform(config.quality_low, 1.0)
        examples.append((p, language.sample_response(p, rng, q)))

    # --- tokenizer + model ----------------------------------------------------------
    tokenizer = make_tokenizer(language.corpus(2000, seed) + [p + " " + r for p, r in examples[:2000]],
                               vocab_size=config.vocab_size)
    model = make_llama(tokenizer, hidden=config.hidden, layers=config.layers, heads=config.heads,
                       intermediate=config.intermediate, max_positions=config.max_positions, seed=seed)
    t_tok = time.perf_counter()
    early: dict = {}  # the pool's weaker writer: the SFT model part-way through training
    early_step = max(1, int(EARLY_FRACTION * config.sft_steps))

    def keep_early(step: int) -> None:
        if step == early_step:
            early.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    sft_stats = train_sft(model, tokenizer, examples, steps=config.sft_steps, batch_size=config.batch_size,
                          lr=config.lr, seed=seed, progress=progress, after_step=keep_early)
    model.save_pretrained(paths.sft_model)
    tokenizer.save_pretrained(paths.sft_model)
    t_sft = time.perf_counter()

    # --- preference data + eval prompts ----------------------------------------------
    make_preference_data(paths.sft_model, train_prompts, paths.train_data, n_responses=config.n_responses,
                         rater_noise=config.rater_noise, seed=seed, temperature=config.temperature,
                         max_new_tokens=config.max_new_tokens, batch_size=config.gen_batch_size, progress=progress,
                         responses=config.responses, early_state=early or None)
    write_jsonl(paths.eval_prompts, ({"prompt": p} for p in eval_prompts))
    t_pref = time.perf_counter()

    meta = {
        "version": WORLD_VERSION, "seed": seed, "quick": quick, "responses": config.responses,
        "config": dataclasses.asdict(config),
        "gold_reward": "currydpo.world.language:gold_reward",
        "n_params": sum(p.numel() for p in model.parameters()),
        "sft": sft_stats,
        "data": data_stats(paths.train_data),
        "timings_s": {"tokenizer": round(t_tok - t0, 2), "sft": round(t_sft - t_tok, 2),
                      "preferences": round(t_pref - t_sft, 2), "total": round(t_pref - t0, 2)},
        "complete": True,
    }
    write_json(paths.meta, meta)


def _encode(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of the chat-formatted example and the length of its prompt part."""
    prompt_text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                               {"role": "assistant", "content": response}], tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[:len(prompt_ids)] != prompt_ids:  # the chat template's role tags are special tokens
        raise CurryError("world tokenizer: the prompt's tokens are not a prefix of the example's tokens")
    return full_ids, len(prompt_ids)


def _batch(encoded: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(encoded), T), -100, dtype=torch.long)
    attention = torch.zeros((len(encoded), T), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(encoded):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        attention[i, :len(ids)] = 1
    return input_ids, attention, labels


def train_sft(model, tokenizer, examples: list[tuple[str, str]], *, steps: int, batch_size: int, lr: float,
              seed: int = 0, progress: bool = True, after_step: Callable[[int], None] | None = None) -> dict:
    """Plain next-token SFT, loss on response tokens (and the closing EOS) only.

    ``after_step(n)`` is called after the n-th update (1-based), e.g. to keep a snapshot.

    Returns the loss on a fixed probe batch before and after training, and the time taken.
    """
    t0 = time.perf_counter()
    encoded = [_encode(tokenizer, p, r) for p, r in examples]
    probe = _batch(encoded[:64], tokenizer.pad_token_id)
    train = encoded[64:] if len(encoded) > 2 * 64 else encoded
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def probe_loss() -> float:
        model.eval()
        with torch.no_grad():
            ids, att, lab = probe
            return float(model(input_ids=ids, attention_mask=att, labels=lab).loss)

    loss_initial = probe_loss()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="world: SFT", unit="step")
    model.train()
    losses = []
    batches: list[list[int]] = []
    for step in range(steps):
        # --- the step: take a length-grouped batch, forward, backward, clip, update --
        if not batches:  # a mega-batch of 16 random batches, grouped by length to cut padding
            idx = torch.randint(len(train), (16 * batch_size,), generator=gen).tolist()
            idx.sort(key=lambda i: len(train[i][0]))
            batches = [idx[k:k + batch_size] for k in range(0, len(idx), batch_size)]
            order = torch.randperm(len(batches), generator=gen).tolist()
            batches = [batches[k] for k in order]
        ids, att, lab = _batch([train[i] for i in batches.pop()], tokenizer.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step(step + 1)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return {"loss_initial": round(loss_initial, 4), "loss_final": round(probe_loss(), 4),
            "train_loss_last": round(statistics.mean(losses[-20:]), 4) if losses else None,
            "steps": steps, "examples": len(examples), "seconds": round(time.perf_counter() - t0, 2)}


def data_stats(train_path: str | os.PathLike) -> dict:
    """Gold reward of the answers (overall and per writer), the judge's ratings, and how close the top pair is.

    (R1,R2) is the judge's best and second-best answer (the hardest best-vs-rest pair);
    ``top_pair_near_tie_share`` counts those whose gold gap is below 0.05.
    """
    gold, best, scores, ratings, tied_best, empty, n_rows = [], [], [], Counter(), 0, 0, 0
    by_writer: dict[str, list[float]] = {}
    top_gaps, top_both_perfect = [], 0
    with open(train_path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            n_rows += 1
            s = [c["fine-grained_score"] for c in row["completions"]]
            g = [language.gold_reward(row["instruction"], c["response"]) for c in row["completions"]]
            tied_best += sum(x == max(s) for x in s) > 1
            empty += sum(not c["response"].strip() for c in row["completions"])
            gold += g
            best.append(max(g))
            scores += s
            for c, x in zip(row["completions"], g):
                ratings.update(c["annotations"][a]["Rating"] for a in ASPECTS)
                by_writer.setdefault(c.get("model", "?"), []).append(x)
            r1, r2 = sorted(range(len(s)), key=lambda i: -s[i])[:2]
            top_gaps.append(abs(g[r1] - g[r2]))
            top_both_perfect += g[r1] >= 0.999 and g[r2] >= 0.999
    if not gold:
        return {"prompts": 0}
    score_hist = Counter(round(x) for x in scores)
    return {
        "prompts": n_rows,
        "gold_mean": round(statistics.mean(gold), 4),
        "gold_sd": round(statistics.pstdev(gold), 4),
        "gold_best_of_n_mean": round(statistics.mean(best), 4),
        "gold_zero_share": round(sum(x == 0.0 for x in gold) / len(gold), 4),
        "gold_one_share": round(sum(x >= 0.999 for x in gold) / len(gold), 4),
        "writer_gold_mean": {w: round(statistics.mean(v), 4) for w, v in sorted(by_writer.items())},
        "writer_answers": {w: len(v) for w, v in sorted(by_writer.items())},
        "top_pair_gold_gap_mean": round(statistics.mean(top_gaps), 4),
        "top_pair_near_tie_share": round(sum(x < 0.05 for x in top_gaps) / n_rows, 4),
        "top_pair_both_perfect_share": round(top_both_perfect / n_rows, 4),
        "score_mean": round(statistics.mean(scores), 4),
        "score_gold_correlation": round(_pearson(gold, scores), 4),
        "aspect_rating_counts": {k: ratings[k] for k in sorted(ratings)},
        "score_rounded_counts": {str(k): score_hist[k] for k in sorted(score_hist)},
        "prompts_with_tied_best": tied_best,
        "empty_responses": empty,
    }


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = statistics.mean(x), statistics.mean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0
