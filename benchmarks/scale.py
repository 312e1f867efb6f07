"""What a run pays around its updates, at UltraFeedback's size (issue 34): loading, `pairs`, tokenisation,
reference passes, time to the first update and peak RSS per phase.

    python benchmarks/scale.py --sizes 8000,64000 --out /tmp/scale                    # this tree ("after")
    python benchmarks/scale.py --sizes 8000 --phases train --src /work/main/src --label before --out /tmp/scale

The data is our own generator: UltraFeedback's layout (``instruction``, four ``completions`` with
per-aspect ratings, see examples/ultrafeedback_tiny.jsonl), random words with log-normal lengths.
The model is the demo world's tiny SFT model (`currydpo.world.build.build_world(quick=True)`).
Every phase runs in a fresh process (``--src`` puts another tree first on its path, e.g. git main's),
so its peak RSS is its own; the train phase reports its inner phases from wrapped functions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

WORDS = ("the of and to in is was for on are with as his they be at one have this from or had by word but what "
         "some we can out other were all there when up use your how said an each she which do their time if will "
         "way about many then them write would like so these her long make thing see him two has look more day "
         "could go come did number sound no most people my over know water than call first who may down side been "
         "now find any new work part take get place made live where after back little only round man year came "
         "show every good me give our under name very through just form sentence great think say help low line "
         "differ turn cause much mean before move right boy old too same tell does set three want air well also "
         "play small end put home read hand port large spell add even land here must big high such follow act why "
         "ask men change went light kind off need house picture try us again animal point mother world near build "
         "self earth father head stand own page should country found answer school grow study still learn plant "
         "cover food sun four between state keep eye never last let thought city tree cross farm hard start might "
         "story saw far sea draw left late run while press close night real life few north").split()
ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def text(rng: random.Random, median_words: float, sigma: float, cap: int) -> str:
    n = max(1, min(cap, int(rng.lognormvariate(math.log(median_words), sigma))))
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_data(path: str, n_prompts: int, seed: int = 0) -> None:
    """``n_prompts`` UltraFeedback rows: a prompt (median 40 words) and 4 completions (median 160 words),
    each with four 1..5 aspect ratings and a fine-grained score (their mean)."""
    rng = random.Random(seed)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        for i in range(n_prompts):
            completions = []
            for j in range(4):
                ratings = {a: rng.randint(1, 5) for a in ASPECTS}
                completions.append({
                    "annotations": {a: {"Rating": str(r), "Rationale": text(rng, 25, 0.5, 120)}
                                    for a, r in ratings.items()},
                    "critique": text(rng, 30, 0.5, 120), "custom_system_prompt": "",
                    "fine-grained_score": sum(ratings.values()) / 4, "model": f"model-{j}",
                    "overall_score": float(rng.randint(1, 10)), "principle": "helpfulness",
                    "response": text(rng, 160, 0.7, 1500)})
            f.write(json.dumps({"source": "scale", "instruction": text(rng, 40, 0.8, 600),
                                "models": [c["model"] for c in completions], "completions": completions}) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- phases (each in its own process)

def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def read(data: str):
    import inspect

    from currydpo.data.loading import load_records

    quiet = {"progress": False} if "progress" in inspect.signature(load_records).parameters else {}
    return load_records(data, "ultrafeedback", **quiet).records


def phase_load(data: str, model: str, out: str) -> dict:
    t0 = time.perf_counter()
    records = read(data)
    return {"load_s": time.perf_counter() - t0, "records": len(records), "load_rss_gb": rss_gb()}


def phase_tokenise(data: str, model: str, out: str) -> dict:
    """Tokenising every response as `train` does (cold cache, then read back), and the tokens' storage."""
    from currydpo.config import DataConfig
    from currydpo.training.model import load_tokenizer

    records = read(data)
    tok, cfg = load_tokenizer(model), DataConfig(max_length=512, max_prompt_length=128)
    base = rss_gb()
    try:
        from currydpo.training.tokencache import encode_cached
    except ImportError:  # a tree before issue 34: serial, no cache
        from currydpo.training.tokenize import encode_for

        def encode_cached(tok, records, data, cache, progress):
            return encode_for(tok, records, data, progress=progress)
    cache = tempfile.mkdtemp(dir=out)
    t0 = time.perf_counter()
    enc = encode_cached(tok, records, cfg, cache, progress=False)
    cold = time.perf_counter() - t0
    res = {"tokenise_s": cold, "tokenise_rss_gb": rss_gb(), "tokenise_rss_added_gb": rss_gb() - base,
           "tokens": sum(len(e) for rec in enc for e in rec),
           "token_storage_gb": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
           / 2 ** 30}
    if res["token_storage_gb"]:
        t0 = time.perf_counter()
        encode_cached(tok, records, cfg, cache, progress=False)
        res["tokenise_cached_s"] = time.perf_counter() - t0
    return res


def phase_train(data: str, model: str, out: str) -> dict:
    """`train` end to end (iterative, 6 updates), with the time of its inner phases and to the first update."""
    from currydpo.config import from_dict, validate
    from currydpo.training import loop
    from currydpo.training.responses import Scorer

    seconds = {"train_reference_s": 0.0, "train_tokenise_s": 0.0}
    marks: dict = {}
    t_start = time.perf_counter()
    score = Scorer.score

    def timed_score(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return score(self, *a, **k)
        finally:
            if str(k.get("desc", "")).startswith("reference"):
                seconds["train_reference_s"] += time.perf_counter() - t0
                marks.setdefault("train_reference_rss_gb", rss_gb())

    Scorer.score = timed_score
    try:  # where set-up tokenises: training/setup.py, or the loop in trees before issue 35
        from currydpo.training import setup as tokenising
    except ImportError:
        tokenising = loop
    name = "encode_cached" if hasattr(tokenising, "encode_cached") else "encode_for"
    encode = getattr(tokenising, name)

    def timed_encode(*a, **k):
        t0 = time.perf_counter()
        try:
            return encode(*a, **k)
        finally:
            seconds["train_tokenise_s"] += time.perf_counter() - t0
            marks["train_tokenise_rss_gb"] = rss_gb()

    setattr(tokenising, name, timed_encode)

    def first_update(run, update):
        marks.setdefault("first_update_s", time.perf_counter() - t_start)

    from currydpo.config import RunConfig

    run = {"output_dir": os.path.join(out, f"train-{os.getpid()}"), "progress": False}
    if "cache_dir" in RunConfig.__dataclass_fields__:  # a tree before issue 34 has no cache
        run["cache_dir"] = tempfile.mkdtemp(dir=out)  # cold: nothing tokenised or scored before
    cfg = validate(from_dict({
        "model": {"path": model}, "data": {"path": data, "format": "ultrafeedback", "max_length": 512,
                                           "max_prompt_length": 128},
        "curriculum": {"schedule": "iterative"}, "optim": {"total_updates": 6, "batch_size": 8}, "run": run}))
    summary = loop.train(cfg, hooks=loop.Hooks(on_batch=[first_update]))
    return {"train_s": time.perf_counter() - t_start, **seconds, **marks, "train_rss_gb": rss_gb(),
            "unique_responses": summary["unique_responses"], "updates": summary["total_updates"]}


def phase_pairs(data: str, model: str, out: str) -> dict:
    from currydpo.cli import main

    t0 = time.perf_counter()
    main(["pairs", data, "--format", "ultrafeedback", "--out", os.path.join(out, "pairs.jsonl"), "--no-progress"])
    return {"pairs_s": time.perf_counter() - t0, "pairs_rss_gb": rss_gb()}


PHASES = {"load": phase_load, "pairs": phase_pairs, "tokenise": phase_tokenise, "train": phase_train}


def run_phase(phase: str, data: str, model: str, out: str, src: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--_phase", phase, "--_data", data, "--_model", model, "--out", out]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="8000,64000", help="prompts per data file, comma-separated")
    p.add_argument("--phases", default="load,pairs,tokenise,train", help="which phases (train runs at 8000 only "
                                                                          "unless --train-all)")
    p.add_argument("--train-all", action="store_true", help="train at every size, not only the smallest")
    p.add_argument("--src", default=None, help="a source tree to measure instead of the installed one")
    p.add_argument("--label", default="after")
    p.add_argument("--model", default=None, help="model directory (default: the demo world's quick SFT model)")
    p.add_argument("--out", required=True)
    p.add_argument("--_phase"), p.add_argument("--_data"), p.add_argument("--_model")
    args = p.parse_args()
    if args._phase:  # inside a phase's own process
        print(json.dumps(PHASES[args._phase](args._data, args._model, args.out)))
        return
    os.makedirs(args.out, exist_ok=True)
    model = args.model
    if model is None:
        from currydpo.world.build import build_world

        model = build_world(os.path.join(args.out, "world"), quick=True, progress=False).sft_model
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        data = os.path.join(args.out, f"ultrafeedback-{n}.jsonl")
        if not os.path.exists(data):
            write_data(data, n)
        row = {"label": args.label, "prompts": n, "file_mb": round(os.path.getsize(data) / 2 ** 20)}
        for phase in args.phases.split(","):
            if phase == "train" and n != min(sizes) and not args.train_all:
                continue
            row.update(run_phase(phase, data, str(model), args.out, args.src))
        results.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    with open(os.path.join(args.out, f"results-{args.label}.jsonl"), "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)


if __name__ == "__main__":
    main()
