"""Online stages: fresh answers from the current policy, judged, ranked, paired, trained on (issue #16)."""

import json

import pytest
import torch

from currydpo.api import train
from currydpo.errors import CurryError
from currydpo.evaluation import online as judging
from currydpo.generation import sampling
from currydpo.training import online
from currydpo.training.setup import setup

from conftest import make_records, tiny_config


def length_score(prompt: str, response: str) -> float:  # a pointwise "judge": longer is better
    return float(len(response.split()))


JUDGE = f"gold:{__name__}:length_score"
ONLINE = {"enabled": True, "samples": 3, "max_new_tokens": 6, "judge": JUDGE}


def online_config(model_dir, out, **sections):
    base = {"curriculum": {"schedule": "iterative", "stages": 2}, "data": {"strategy": "best-vs-rest"},
            "optim": {"total_updates": 6}, "generation": {"batch_size": 4}, "online": dict(ONLINE)}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return tiny_config(model_dir, out, **base)


def test_online_stage_trains_on_judged_samples_of_the_previous_policy(tiny_model_dir, tmp_path):
    recs = make_records(6, n_responses=3)
    out = tmp_path / "run"
    summary = train(online_config(tiny_model_dir, out), records=recs)
    s1, s2 = summary["stages"]
    assert "online/pairs" not in s1 and s1["label"] == "rejected rank >=3"  # stage 1 offline (from_stage 2)
    assert s2["label"].startswith("online:") and s2["reference"] == "stage-1"
    assert s2["online/prompts"] == 6 and s2["online/samples"] == 18
    assert s2["pairs"] == s2["online/pairs"] > 0 and s2["updates"] == s1["updates"] == 3  # the planned updates
    chunks = sorted((out / "online" / "stage-2" / "samples").iterdir())
    assert [c.name for c in chunks] == ["chunk-00000.json", "chunk-00001.json"]  # 6 prompts, 4 per chunk
    answers = [a for c in chunks for a in json.loads(c.read_text())["answers"]]
    assert [len(a) for a in answers] == [3] * 6
    judged = [json.loads(c.read_text()) for c in sorted((out / "online" / "stage-2" / "judged").iterdir())]
    scores = [s for j in judged for s in j["scores"]]
    texts = [sampling.distinct(a) for a in answers]
    assert scores == [[length_score("", t) for t in ts] for ts in texts]  # the judge's scores, per distinct answer
    # Stage 2's reference log-probs of the new responses are what stage 1's saved policy gives. The run is
    # rebuilt and stage 2 replayed from its files: the same table rows as in training.
    from transformers import AutoModelForCausalLM

    from currydpo.training.responses import logps_for_rows

    run = setup(online_config(tiny_model_dir, out), recs)
    n_offline = len(run.table.keys)
    online.OnlineStages(judging.collect).stage(1, run, replay=True)
    new_rows = list(range(n_offline, len(run.table.keys)))
    assert new_rows and all(run.data.records[r].meta["online_stage"] == 2 for r, _ in
                            (run.table.keys[j] for j in new_rows))
    cached = torch.load(out / "refcache" / "stage-1.pt")
    fresh, _ = logps_for_rows(AutoModelForCausalLM.from_pretrained(out / "stage-1"), run.table, new_rows,
                              run.tokenizer.pad_token_id, 8, progress=False)
    torch.testing.assert_close(cached[new_rows], fresh, rtol=1e-5, atol=1e-4)


def test_from_stage_1_with_prompt_file_and_offline_mix(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from currydpo.generation.generate import GenerationConfig, generate

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the cat sat {w}"}) + "\n" for w in ("on", "in", "by")))
    recs = make_records(6, n_responses=3)
    out = tmp_path / "run"
    cfg = online_config(tiny_model_dir, out, online={"from_stage": 1, "mix": 0.5, "prompts": str(prompts)},
                        run={"seed": 3})
    summary = train(cfg, records=recs)
    for s in summary["stages"]:  # both stages online: the file's 3 prompts, plus half the offline stage's 6 pairs
        assert s["online/prompts"] == 3 and s["label"] == f"online: {s['online/pairs']} pairs + 3 offline"
        assert s["pairs"] == s["online/pairs"] + 3
    # Stage 1 samples the initial policy, seeded per chunk: the same answers as a plain generate call.
    chunk = json.loads((out / "online" / "stage-1" / "samples" / "chunk-00000.json").read_text())
    texts = ["the cat sat on", "the cat sat in", "the cat sat by"]
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    again = generate(model, tok, [t for t in texts for _ in range(3)],
                     GenerationConfig(max_new_tokens=6, temperature=1.0, batch_size=9, seed=3 * 1_000_003 + 100_003),
                     progress=False)
    assert chunk["prompts"] == texts and chunk["answers"] == [again[0:3], again[3:6], again[6:9]]


def test_a_stage_without_pairs_is_a_clear_error(tiny_model_dir, tmp_path):
    cfg = online_config(tiny_model_dir, tmp_path / "run", online={"judge": f"gold:{__name__}:constant"})
    with pytest.raises(CurryError, match="online stage 2: no pairs from 6 prompts"):
        train(cfg, records=make_records(6, n_responses=3))


def constant(prompt: str, response: str) -> float:  # every answer tied: no pair
    return 1.0
