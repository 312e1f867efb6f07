"""Per-update cost of the listwise losses against dpo on the same data (docs/performance.md).

Tiny model, CPU: sequences and tokens through the policy per update (exact counts) and median
seconds per update (noisy on a shared machine). Run from the repository root:

    PYTHONPATH=src:tests python benchmarks/listwise_cost.py /tmp/listwise-cost
"""

import json
import statistics
import sys
import time

import torch

from currydpo.training import loop
from currydpo.world.tiny import save_tiny

from conftest import CORPUS, make_records, tiny_config

torch.set_num_threads(1)
out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/listwise-cost"
model_dir = save_tiny(f"{out}/model", CORPUS, vocab_size=300, hidden=64, layers=2, heads=2)
recs = make_records(48, n_responses=4, seed=1)
arms = [("dpo", 6), ("plackett-luce", 2), ("pro", 2), ("lipo", 2)] * 2  # 6 pairs = 2 lists of 4, interleaved
for run, (name, batch) in enumerate(arms):
    counts, times, last = {"seq": 0, "tok": 0}, [], [time.perf_counter()]

    def on_batch(run, update, counts=counts, times=times, last=last):
        """Sequences and tokens the update's micro-batches forward (each unique response once), and the
        seconds since the previous update (the first one's include setup, so the median is taken)."""
        for idx in update.micro:
            rows = run.objective.rows(run.objective.items(idx))[0]
            counts["seq"] += len(rows)
            counts["tok"] += sum(len(run.table.encoded[r]) for r in rows)
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cfg = tiny_config(model_dir, f"{out}/run-{run}-{name}", curriculum={"schedule": "random"},
                      loss={"name": name}, optim={"batch_size": batch, "total_updates": 24})
    loop.train(cfg, records=recs, hooks=loop.Hooks(on_batch=[on_batch]))
    print(json.dumps({"loss": name, "per_update": f"{batch} {'pairs' if name == 'dpo' else 'lists'}",
                      "sequences": counts["seq"] / len(times), "tokens": counts["tok"] / len(times),
                      "median_s": statistics.median(times)}), flush=True)
