"""`loop.stage_batches`: the pairs of each update, identical to the plain per-pair reshuffle."""

import random
from types import SimpleNamespace

from currydpo.curriculum.schedules import Stage
from currydpo.training import loop


def plain_batches(order, stage_index, update, P, B, seed, shuffle):
    """The reference: reshuffle the whole pass for every pair picked (quadratic, but obviously right)."""
    picked = []
    for pos in range(update * P, update * P + P):
        epoch, k = divmod(pos, len(order))
        seq = order
        if epoch > 0 and shuffle:
            seq = order[:]
            random.Random(seed * 7919 + stage_index * 131 + epoch).shuffle(seq)
        picked.append(seq[k])
    return [picked[j:j + B] for j in range(0, P, B)]


def fake_run(batch_size, grad_accum, processes, process, shuffle, seed=5):
    cfg = SimpleNamespace(optim=SimpleNamespace(batch_size=batch_size, grad_accum=grad_accum),
                          curriculum=SimpleNamespace(shuffle_within_stage=shuffle), run=SimpleNamespace(seed=seed))
    acc = SimpleNamespace(num_processes=processes, process_index=process)
    return SimpleNamespace(cfg=cfg, accelerator=acc, pairs_per_update=batch_size * grad_accum * processes,
                           resolved=SimpleNamespace(shuffle_within_stage=shuffle, reshuffle_passes=shuffle))


def test_batches_equal_the_plain_reshuffle_over_several_passes():
    order = list(range(100, 137))  # 37 pairs: updates straddle pass boundaries
    stage = Stage(index=2, pairs=order, label="x")
    for shuffle in (True, False):
        for processes in (1, 2):
            for process in range(processes):
                run = fake_run(4, 3, processes, process, shuffle)
                for update in range(12):  # 12 x 24 pairs: almost 8 passes
                    want = plain_batches(order, 2, update, run.pairs_per_update, 4, 5, shuffle)[process::processes]
                    assert loop.stage_batches(run, stage, order, update) == want
