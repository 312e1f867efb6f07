"""Online stages, the sampling half: fresh answers from the current policy (issue #16).

For every training prompt (or every prompt of ``online.prompts``), `sample` draws
``online.samples`` answers from the current policy with ``generation.engine``, seeded per
chunk of ``generation.batch_size`` prompts. Every chunk is written atomically under
``OUTPUT/online/stage-K/samples/`` with its time; a resumed run reads what is written and
samples only the rest, and a finished stage is replayed from its files alone.
`evaluation.online.collect` judges the samples and ranks them. These functions take what they use
(config, policy, tokenizer, data), not the training run.
"""

from __future__ import annotations

import json
import os
import time

import torch

from ..errors import CurryError
from ..io import write_json
from ..progress import progress_bar
from ..training.online import stage_dir
from ..training.references import stage_name
from .engines import make_engine
from .generate import GenerationConfig, Prompt, load_prompts


def training_prompts(cfg, tokenizer, data) -> list[Prompt]:
    """``online.prompts``, else the prompts of the offline training records of ``data`` (a `pipeline.Prepared`;
    held-out ones excluded)."""
    if cfg.data.chat_template == "never" and getattr(tokenizer, "chat_template", None):
        raise CurryError("online stages sample through the tokenizer's chat template, as eval does, but "
                         "data.chat_template is never: set data.chat_template auto so training sees the same text")
    if cfg.online.prompts:
        return load_prompts(cfg.online.prompts)
    held_out = {p.record for p in data.eval_pairs}
    out = []
    for i, rec in enumerate(data.records):
        if i in held_out or "online_stage" in rec.meta:
            continue
        if isinstance(rec.prompt, str):
            out.append(Prompt(rec.id, rec.prompt))
        else:
            users = [m["content"] for m in rec.prompt if m["role"] == "user"]
            out.append(Prompt(rec.id, users[-1] if users else "", rec.prompt))
    return out


def read_chunk(path: str, prompts: list[Prompt], replay: bool) -> dict | None:
    """The chunk file at ``path`` if written (None if not); a replayed stage must have all of them."""
    if not os.path.exists(path):
        if replay:
            raise CurryError(f"{path} is missing but its stage already finished; restore the file or start a new "
                             f"run.output_dir")
        return None
    with open(path, encoding="utf-8") as f:
        chunk = json.load(f)
    if chunk["prompts"] != [p.text for p in prompts]:
        raise CurryError(f"{path} was written for other prompts (changed data, online.prompts or "
                         f"generation.batch_size); delete {os.path.dirname(os.path.dirname(path))} to sample afresh")
    return chunk


def stage_bar(k: int, what: str, total: int, enabled: bool):
    return progress_bar(total=total, desc=f"online stage {k + 1}: {what}", unit="prompt", enabled=enabled)


def sample(cfg, policy, tokenizer, k: int, prompts: list[Prompt], chunks: list[list[Prompt]], replay: bool,
           progress: bool) -> list[dict]:
    """Stage ``k``'s answers from ``policy`` (the model being trained, unwrapped), per chunk of prompts:
    ``{"prompts", "answers": [[S answers] per prompt], "seconds"}``; read when written."""
    on = cfg.online
    base = stage_dir(cfg.run.output_dir, k)
    out, engine = [], None
    bar = stage_bar(k, "sampling", len(prompts), progress)
    for c, chunk in enumerate(chunks):
        path = os.path.join(base, "samples", f"chunk-{c:05d}.json")
        got = read_chunk(path, chunk, replay)
        if got is None:
            engine = engine or policy_engine(cfg, policy, tokenizer, k)
            t0 = time.perf_counter()
            gen = GenerationConfig(max_new_tokens=on.max_new_tokens, temperature=on.temperature,
                                   top_p=cfg.generation.top_p, do_sample=True, batch_size=len(chunk) * on.samples,
                                   seed=cfg.run.seed * 1_000_003 + (k + 1) * 100_003 + c)
            flat = engine.generate([p for p in chunk for _ in range(on.samples)], gen, progress=False)
            got = {"prompts": [p.text for p in chunk],
                   "answers": [flat[j * on.samples:(j + 1) * on.samples] for j in range(len(chunk))],
                   "seconds": time.perf_counter() - t0}
            write_json(path, got)
        out.append(got)
        bar.update(len(chunk))
    bar.close()
    del engine
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # a vLLM engine's KV cache goes back before training
    return out


def policy_engine(cfg, policy, tokenizer, k: int):
    """The engine that samples stage ``k``'s answers: ``policy`` in memory (hf), or its saved copy (vllm)."""
    path = cfg.model.path if k == 0 else os.path.join(cfg.run.output_dir, stage_name(k - 1))  # the current policy
    return make_engine(cfg.generation.engine, model=policy, tokenizer=tokenizer,
                       path=path, seed=cfg.run.seed, gpu_memory_utilization=cfg.generation.vllm_gpu_memory_utilization,
                       trust_remote_code=cfg.model.trust_remote_code)


def distinct(answers: list[str]) -> list[str]:
    """The answers worth judging: non-empty, each text once (a record stores each response once)."""
    seen: dict[str, None] = {}
    for a in answers:
        if a.strip():
            seen.setdefault(a, None)
    return list(seen)
