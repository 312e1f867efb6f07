"""The response table's work split over processes (reference pass, held-out metrics)."""

from currydpo.data.pairs import build_pairs
from currydpo.training.responses import ResponseTable, shard_rows
from currydpo.training.tokenize import Encoded

from conftest import make_records


def fake_encoded(records):
    """Encoded rows whose lengths vary by prompt and response (token ids are irrelevant here)."""
    return [[Encoded(tuple(range(100 + 7 * r)), tuple(range(3 + 5 * i))) for i in range(len(rec.responses))]
            for r, rec in enumerate(records)]


def test_shards_partition_the_rows_keep_prompts_together_and_balance_tokens():
    records = make_records(n_prompts=9)
    table = ResponseTable.from_pairs(build_pairs(records, "best-vs-rest"), fake_encoded(records))
    rows = list(range(len(table.keys)))
    for W in (1, 2, 3, 4):
        shards = shard_rows(table, rows, W)
        assert sorted(r for s in shards for r in s) == rows  # every row exactly once
        owner = {table.keys[r][0]: k for k, s in enumerate(shards) for r in s}
        assert all(owner[table.keys[r][0]] == k for k, s in enumerate(shards) for r in s)  # a prompt in one shard
        load = [sum(len(table.encoded[r]) for r in s) for s in shards]
        biggest_prompt = max(sum(len(table.encoded[r]) for r in rows if table.keys[r][0] == p) for p in range(9))
        assert max(load) - min(load) <= biggest_prompt  # greedy balance: within one prompt's work
    assert shard_rows(table, rows, 2) == shard_rows(table, rows, 2)  # deterministic: every process agrees
