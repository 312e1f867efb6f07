"""Online stages, the sampling and judging half: fresh answers from the current policy, rated (issue #16).

`collect` is what an online training stage asks for (`training/online.py` does the rest:
pairs, difficulty, order, response table): for every training prompt (or every prompt of
``online.prompts``) it samples ``online.samples`` answers from the current policy with
``generation.engine`` (seeded per chunk of ``generation.batch_size`` prompts), scores them
with ``online.judge`` — pointwise judges (gold function, reward model) score each answer;
a pairwise LLM judge compares every two answers of a prompt in both orders, and an
answer's score is its share of comparisons won (ties count 1/2) — and returns one ranked
`Record` per prompt with at least two distinct answers.

Nothing paid for is lost: every chunk of samples and of scores is written atomically
under ``OUTPUT/online/stage-K/`` (``samples/``, ``judged/``) with its time, judge calls
and the endpoint's usage; an LLM judge keeps its verdict cache in
``OUTPUT/online/judge-cache/``. A resumed run reads what is written and samples or asks
only the rest; a finished stage is replayed from its files alone.

It lives in the evaluation layer because it samples and judges (`engines`, `judges`);
`train` hands it to the training loop, which does not import this layer.
"""

from __future__ import annotations

import json
import math
import os
import time

import torch
from tqdm.auto import tqdm

from ..data.records import Record, Response
from ..errors import CurryError
from ..io import bars_off, write_json
from ..training.online import ONLINE_DIR, stage_dir
from .engines import make_engine
from .generation import GenerationConfig, Prompt, load_prompts


def train(cfg, records=None, resume: bool = False, hooks=None) -> dict:
    """`training.loop.train` with online stages sampled and judged by `collect` (used by `train`, `compare`)."""
    from ..training.loop import train as train_loop
    from ..training.online import OnlineStages

    return train_loop(cfg, records, resume, stages=OnlineStages(collect) if cfg.online.enabled else None,
                      hooks=hooks)


def collect(run, k: int, replay: bool) -> tuple[list[Record], dict]:
    """Stage ``k``'s ranked records from fresh judged samples, and what they cost (``online/*`` keys).

    One process samples and judges; the others read its files. ``replay``: read only.
    """
    acc = run.accelerator
    prompts = training_prompts(run)
    B = run.cfg.generation.batch_size
    chunks = [prompts[i:i + B] for i in range(0, len(prompts), B)]
    if acc.is_main_process:
        samples = sample(run, k, prompts, chunks, replay)
        judged = judge_all(run, k, samples, chunks, replay)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        samples = sample(run, k, prompts, chunks, replay=True)
        judged = judge_all(run, k, samples, chunks, replay=True)
    records = ranked_records(k, chunks, samples, judged)
    return records, cost_summary(prompts, samples, judged, records)


def training_prompts(run) -> list[Prompt]:
    """``online.prompts``, else the prompts of the offline training records (held-out ones excluded)."""
    if run.cfg.data.chat_template == "never" and getattr(run.tokenizer, "chat_template", None):
        raise CurryError("online stages sample through the tokenizer's chat template, as eval does, but "
                         "data.chat_template is never: set data.chat_template auto so training sees the same text")
    if run.cfg.online.prompts:
        return load_prompts(run.cfg.online.prompts)
    held_out = {p.record for p in run.data.eval_pairs}
    out = []
    for i, rec in enumerate(run.data.records):
        if i in held_out or "online_stage" in rec.meta:
            continue
        if isinstance(rec.prompt, str):
            out.append(Prompt(rec.id, rec.prompt))
        else:
            users = [m["content"] for m in rec.prompt if m["role"] == "user"]
            out.append(Prompt(rec.id, users[-1] if users else "", rec.prompt))
    return out


def _read_chunk(path: str, prompts: list[Prompt], replay: bool) -> dict | None:
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


def _bar(run, k: int, what: str, total: int):
    return tqdm(total=total, desc=f"online stage {k + 1}: {what}", unit="prompt",
                disable=bars_off(run.cfg.run.progress and run.accelerator.is_main_process))


def sample(run, k: int, prompts: list[Prompt], chunks: list[list[Prompt]], replay: bool) -> list[dict]:
    """Per chunk of prompts: ``{"prompts", "answers": [[S answers] per prompt], "seconds"}``; read when written."""
    cfg, on = run.cfg, run.cfg.online
    base = stage_dir(cfg.run.output_dir, k)
    out, engine = [], None
    bar = _bar(run, k, "sampling", len(prompts))
    for c, chunk in enumerate(chunks):
        path = os.path.join(base, "samples", f"chunk-{c:05d}.json")
        got = _read_chunk(path, chunk, replay)
        if got is None:
            engine = engine or _engine(run, k)
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


def _engine(run, k: int):
    cfg = run.cfg
    path = cfg.model.path if k == 0 else os.path.join(cfg.run.output_dir, f"stage-{k}")  # the current policy
    return make_engine(cfg.generation.engine, model=run.accelerator.unwrap_model(run.model), tokenizer=run.tokenizer,
                       path=path, seed=cfg.run.seed, gpu_memory_utilization=cfg.generation.vllm_gpu_memory_utilization,
                       trust_remote_code=cfg.model.trust_remote_code)


def distinct(answers: list[str]) -> list[str]:
    """The answers worth judging: non-empty, each text once (a record stores each response once)."""
    seen: dict[str, None] = {}
    for a in answers:
        if a.strip():
            seen.setdefault(a, None)
    return list(seen)


def judge_chunk(judge, chunk: dict) -> dict:
    """Scores for every distinct answer of each prompt of ``chunk``; pairwise judges: win counts."""
    texts = [distinct(a) for a in chunk["answers"]]
    if hasattr(judge, "score"):
        flat_p = [p for p, ans in zip(chunk["prompts"], texts) for _ in ans]
        flat = judge.score(flat_p, [a for ans in texts for a in ans]) if flat_p else []
        it = iter(float(s) for s in flat)
        scores = [[next(it) for _ in ans] for ans in texts]
        return {"scores": scores}
    scores = []
    for prompt, ans in zip(chunk["prompts"], texts):  # one prompt at a time: a kill loses at most one prompt's asks
        ij = [(i, j) for i in range(len(ans)) for j in range(i + 1, len(ans))]
        wins, judged = [0.0] * len(ans), [0] * len(ans)
        outcomes = judge.compare([prompt] * len(ij), [ans[i] for i, _ in ij], [ans[j] for _, j in ij]) if ij else []
        for (i, j), o in zip(ij, outcomes):
            if o is None:  # the judge abstained: this comparison counts for neither answer
                continue
            wins[i] += o
            wins[j] += 1.0 - o
            judged[i] += 1
            judged[j] += 1
        # share of comparisons won, in [0, 1]; None for an answer the judge never ruled on (left out of the record)
        scores.append([w / c if c else (None if ij else 0.0) for w, c in zip(wins, judged)])
    return {"scores": scores}


def judge_all(run, k: int, samples: list[dict], chunks: list[list[Prompt]], replay: bool) -> list[dict]:
    """Per chunk: ``{"scores": [[score per distinct answer] per prompt], "seconds", "calls", "usage"}``."""
    cfg = run.cfg
    base = stage_dir(cfg.run.output_dir, k)
    judge, out = None, []
    bar = _bar(run, k, "judging", sum(len(c) for c in chunks))
    for c, (chunk, got_samples) in enumerate(zip(chunks, samples)):
        path = os.path.join(base, "judged", f"chunk-{c:05d}.json")
        got = _read_chunk(path, chunk, replay)
        if got is None:
            judge = judge or _judge(run)
            stats0, usage0 = dict(getattr(judge, "stats", {})), dict(getattr(judge, "usage", {}))
            t0 = time.perf_counter()
            got = {"prompts": got_samples["prompts"], **judge_chunk(judge, got_samples),
                   "seconds": time.perf_counter() - t0}
            got["calls"] = {key: v - stats0.get(key, 0) for key, v in getattr(judge, "stats", {}).items()}
            got["usage"] = {key: v - usage0.get(key, 0) for key, v in getattr(judge, "usage", {}).items()}
            write_json(path, got)
        out.append(got)
        bar.update(len(chunk))
    bar.close()
    return out


def _judge(run):
    from .judges import make_judge

    cfg = run.cfg
    return make_judge(cfg.online.judge, cache_dir=os.path.join(cfg.run.output_dir, ONLINE_DIR, "judge-cache"),
                      trust_remote_code=cfg.model.trust_remote_code)


def ranked_records(k: int, chunks: list[list[Prompt]], samples: list[dict], judged: list[dict]) -> list[Record]:
    """One record per prompt with >= 2 distinct answers the judge scored, each with its score."""
    records = []
    for chunk, s, j in zip(chunks, samples, judged):
        for p, answers, scores in zip(chunk, s["answers"], j["scores"]):
            scored = [(t, sc) for t, sc in zip(distinct(answers), scores) if sc is not None]  # None: abstained
            if len(scored) < 2:
                continue
            prompt = p.messages if p.messages is not None else p.text
            records.append(Record(f"online-{k + 1}-{p.id}", prompt, [Response(t, sc) for t, sc in scored],
                                  meta={"online_stage": k + 1}))
    return records


def cost_summary(prompts, samples, judged, records) -> dict:
    """What the samples and judgments cost and gave, summed over the chunk files (a resumed stage counts
    each chunk once; the asks of a chunk cut by a kill show up as ``cached`` in the run that finished it)."""
    scores = [x.score for r in records for x in r.responses]
    calls: dict[str, float] = {}
    usage: dict[str, float] = {}
    for j in judged:
        for key, v in j.get("calls", {}).items():
            calls[key] = calls.get(key, 0) + v
        for key, v in j.get("usage", {}).items():
            usage[key] = usage.get(key, 0) + v
    info = {"prompts": len(prompts), "samples": sum(len(a) for s in samples for a in s["answers"]),
            "judged_answers": sum(len(x) for j in judged for x in j["scores"]), "ranked_prompts": len(records),
            "judge_mean_score": sum(scores) / len(scores) if scores else math.nan,
            "sampling_seconds": round(sum(s.get("seconds", 0.0) for s in samples), 3),
            "judging_seconds": round(sum(j.get("seconds", 0.0) for j in judged), 3)}
    if calls:
        info["judge_calls"] = calls
    if usage:
        info["judge_usage"] = usage
    return {f"online/{key}": v for key, v in info.items()}
