"""Online stages, the judging half: the current policy's fresh answers, rated (issue #16).

`collect` is what an online training stage asks for (`training.online.OnlineStages` does the
rest: pairs, difficulty, order, response table): the answers `generation.sampling.sample`
drew for every training prompt, scored with ``online.judge`` — pointwise judges (gold
function, reward model) score each answer; a pairwise LLM judge compares every two answers
of a prompt in both orders, and an answer's score is its share of comparisons won (ties
count 1/2) — and returns one ranked `Record` per prompt with at least two distinct answers.

Nothing paid for is lost: every chunk of samples and of scores is written atomically
under ``OUTPUT/online/stage-K/`` (``samples/``, ``judged/``) with its time, judge calls
and the endpoint's usage; an LLM judge keeps its verdict cache in
``OUTPUT/online/judge-cache/``. A resumed run reads what is written and samples or asks
only the rest; a finished stage is replayed from its files alone.

It lives in the evaluation layer because it judges (`judges`). A training entry point (``currydpo
train``, `currydpo.train`, compare's arms) builds the source, `online_stages`, only for an online run
and hands it to `training.loop.train`, which imports neither sampling nor judges.
"""

from __future__ import annotations

import math
import os
import time

from ..data.records import Record, Response
from ..generation.generate import Prompt
from ..generation.sampling import distinct, read_chunk, sample, stage_bar, training_prompts
from ..io import write_json
from ..training.online import ONLINE_DIR, OnlineStages, stage_dir
from .judges import make_judge


def online_stages() -> OnlineStages:
    """The `StageSource` of an online run: offline stages from the plan, online ones sampled and judged by
    `collect`. The entry point builds it and passes it to `training.loop.train`."""
    return OnlineStages(collect)


def collect(run, k: int, replay: bool) -> tuple[list[Record], dict]:
    """Stage ``k``'s ranked records from fresh judged samples, and what they cost (``online/*`` keys).

    One process samples and judges; the others read its files. ``replay``: read only.
    """
    cfg, acc = run.cfg, run.accelerator
    policy, show = acc.unwrap_model(run.model), cfg.run.progress and acc.is_main_process
    prompts = training_prompts(cfg, run.tokenizer, run.data)
    B = cfg.generation.batch_size
    chunks = [prompts[i:i + B] for i in range(0, len(prompts), B)]
    if acc.is_main_process:
        samples = sample(cfg, policy, run.tokenizer, k, prompts, chunks, replay, show)
        judged = judge_all(cfg, k, samples, chunks, replay, show)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        samples = sample(cfg, policy, run.tokenizer, k, prompts, chunks, True, show)
        judged = judge_all(cfg, k, samples, chunks, True, show)
    records = ranked_records(k, chunks, samples, judged)
    return records, cost_summary(prompts, samples, judged, records)


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


def judge_all(cfg, k: int, samples: list[dict], chunks: list[list[Prompt]], replay: bool,
              progress: bool) -> list[dict]:
    """Per chunk: ``{"scores": [[score per distinct answer] per prompt], "seconds", "calls", "usage"}``."""
    base = stage_dir(cfg.run.output_dir, k)
    judge, out = None, []
    bar = stage_bar(k, "judging", sum(len(c) for c in chunks), progress)
    for c, (chunk, got_samples) in enumerate(zip(chunks, samples)):
        path = os.path.join(base, "judged", f"chunk-{c:05d}.json")
        got = read_chunk(path, chunk, replay)
        if got is None:
            judge = judge or online_judge(cfg)
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


def online_judge(cfg):
    """``online.judge``, its verdicts cached under ``OUTPUT/online/judge-cache/``."""
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
