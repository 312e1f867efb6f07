"""Tiny-model runs of the stage loop, with invariants."""

import dataclasses
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from currydpo.data.records import as_chat
from currydpo.errors import CurryError
from currydpo.training import loop
from currydpo.training.refplan import rows_of_stages
from currydpo.training.responses import ResponseTable, Scorer, logps_for_rows
from currydpo.training.tokenize import encode_records

from conftest import check_log_continued, dir_fingerprint, make_records, mark_log, tiny_config


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def test_iterative_three_stages_swap_reference_and_learn(tiny_model_dir, tmp_path):
    recs = make_records(16)
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, out, curriculum={"schedule": "iterative", "stages": 3},
                      optim={"epochs_per_stage": 4})
    summary = loop.train(cfg, records=recs)
    assert [s["reference"] for s in summary["stages"]] == ["initial", "stage-1", "stage-2"]
    assert [s["label"] for s in summary["stages"]] == ["rejected rank >=4", "rejected rank 3", "rejected rank 2"]
    # Each stage's reference log-probs are exactly what the previous stage's saved weights give.
    tok = AutoTokenizer.from_pretrained(out / "final")
    from currydpo.data.pairs import build_pairs

    pairs = build_pairs(recs, "best-vs-rest")
    table = ResponseTable.from_pairs(pairs, encode_records(as_chat(recs), tok, max_length=512, max_prompt_length=256,
                                                           progress=False))
    for key, model_dir in (("initial", tiny_model_dir), ("stage-1", out / "stage-1"), ("stage-2", out / "stage-2")):
        cached = torch.load(out / "refcache" / f"{key}.pt")
        rows = [j for j in range(len(table.keys)) if not torch.isnan(cached[j])]
        assert rows, key
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        fresh, _ = logps_for_rows(model, table, rows, tok.pad_token_id, 8, progress=False)
        torch.testing.assert_close(cached[rows], fresh, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(torch.load(out / "refcache" / "stage-1.pt")[rows],
                              torch.load(out / "refcache" / "initial.pt")[rows])
    # Loss falls and reward accuracy rises inside each stage.
    log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    for k in (1, 2, 3):
        stage = [e for e in log if e["stage"] == k]
        assert stage[-1]["loss"] < stage[0]["loss"]
        assert stage[-1]["rewards/accuracies"] >= stage[0]["rewards/accuracies"]
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "stage", "difficulty", "learning_rate", "grad_norm", "epoch", "num_tokens"} <= set(log[0])
    AutoModelForCausalLM.from_pretrained(out / "final")  # plain HF loading
    a, b, init = weights(out / "final"), weights(out / "stage-3"), weights(tiny_model_dir)
    assert all(torch.equal(a[n], b[n]) for n in a)  # final/ = the last stage's policy
    assert not all(torch.equal(a[n], init[n]) for n in a)  # which trained away from the initial weights
    assert (out / "config.yaml").exists() and (out / "stage-3" / "currydpo_config.yaml").exists()


def test_initial_reference_mode_never_swaps(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "r", curriculum={"schedule": "iterative", "reference": "initial"})
    summary = loop.train(cfg, records=make_records(8))
    assert [s["reference"] for s in summary["stages"]] == ["initial"] * 3
    assert sorted(os.listdir(tmp_path / "r" / "refcache")) == ["initial.pt"]


def test_batch_8x1_equals_batch_1x8_and_2x4(tiny_model_dir, tmp_path):
    recs = make_records(16)
    finals = []
    for bs, accum in ((8, 1), (1, 8), (2, 4)):
        cfg = tiny_config(tiny_model_dir, tmp_path / f"b{bs}", curriculum={"schedule": "random"},
                          optim={"batch_size": bs, "grad_accum": accum, "epochs_per_stage": 2})
        s = loop.train(cfg, records=recs)
        assert s["total_updates"] == 12  # 48 pairs / 8 per update * 2 epochs
        finals.append(weights(tmp_path / f"b{bs}" / "final"))
    for other in finals[1:]:
        for k in finals[0]:
            torch.testing.assert_close(finals[0][k], other[k], rtol=1e-4, atol=1e-6)


def test_resume_after_interruption_reaches_same_weights(tiny_model_dir, tmp_path, monkeypatch):
    recs = make_records(12)
    sections = dict(curriculum={"schedule": "iterative", "shuffle_within_stage": True},
                    optim={"epochs_per_stage": 3, "across_stages": "continue"}, run={"save_every": 2})
    ref = tmp_path / "ref"
    loop.train(tiny_config(tiny_model_dir, ref, **sections), records=recs)

    real_step, calls = loop.train_step, {"n": 0}

    def dying_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 12:  # mid stage 2, after a save_every checkpoint
            raise KeyboardInterrupt
        return real_step(*a, **k)

    out = tmp_path / "resumed"
    cfg = tiny_config(tiny_model_dir, out, **sections)
    monkeypatch.setattr(loop, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, records=recs)
    assert not (out / "final").exists()
    with pytest.raises(Exception, match="--resume"):
        loop.train(cfg, records=recs)
    # Guards a run that silently started over would fail (equal final weights alone do not tell):
    # stage-1/ untouched, the log continued from the checkpoint, only the remaining updates executed.
    step = json.loads((out / "state" / "position.json").read_text())["global_step"]
    assert step == 11  # 9 updates per stage; stage 2's save_every checkpoint after its 2nd update, the 3rd died
    stage1 = dir_fingerprint(out / "stage-1")
    mark_log(out)
    monkeypatch.setattr(loop, "train_step", real_step)
    executed = []
    summary = loop.train(cfg, records=recs, resume=True,
                         hooks=loop.Hooks(on_batch=[lambda run, update: executed.append(update.step)]))
    assert executed == list(range(step + 1, summary["total_updates"] + 1)) and len(executed) == 16
    assert dir_fingerprint(out / "stage-1") == stage1
    check_log_continued(out, step, summary["total_updates"])
    a, b = weights(ref / "final"), weights(out / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise on CPU
    la = [json.loads(x)["loss"] for x in open(ref / "metrics.jsonl")]
    lb = [json.loads(x)["loss"] for x in open(out / "metrics.jsonl")]
    assert la == lb


@pytest.mark.parametrize("schedule,loss", [("single-pass", "ipo"), ("self-paced", "dpo"), ("cyclical", "simpo"),
                                           ("single-pair", "orpo"), ("anti", "mmpo"),
                                           ("random", ["dpo", "bco-pair", "sft"])])
def test_every_schedule_trains_end_to_end(tiny_model_dir, tmp_path, schedule, loss):
    cfg = tiny_config(tiny_model_dir, tmp_path / "r", curriculum={"schedule": schedule, "stages": 2},
                      loss={"name": loss}, optim={"total_updates": 6})
    s = loop.train(cfg, records=make_records(8))
    assert s["total_updates"] == 6 and s["final_loss"] is not None
    log = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert [e["step"] for e in log] == list(range(1, 7)) and all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    a, init = weights(tmp_path / "r" / "final"), weights(tiny_model_dir)
    assert not all(torch.equal(a[n], init[n]) for n in a)  # the updates changed the model
    if isinstance(loss, list):  # a weighted combination logs each component
        assert {f"loss/{n}" for n in loss} <= set(log[0])


def test_lora_trains_adapters_and_final_is_merged(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "r", model={"lora": True, "lora_r": 4},
                      curriculum={"schedule": "single-pass"}, optim={"lr": 1e-2})
    loop.train(cfg, records=make_records(8))
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "r" / "final")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for (n, p), (_, q) in zip(final.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert changed and all("proj" in n for n in changed)


def test_lora_target_modules_that_do_not_exist_are_a_one_line_error(tiny_model_dir, tmp_path):
    # peft alone only warns when some of the listed names match nothing, and trains the rest
    cfg = tiny_config(tiny_model_dir, tmp_path / "r", model={"lora": True, "lora_target_modules": "q_proj,qkv_proj"})
    with pytest.raises(CurryError, match=r"^model.lora_target_modules: qkv_proj not found in .*\(its linear layers: "
                                         r".*q_proj.*\); use those names or all-linear$"):
        loop.train(cfg, records=make_records(8))
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_final_model_best_is_the_stage_with_the_best_held_out_metric(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, out, curriculum={"schedule": "iterative", "stages": 3},
                      data={"eval_fraction": 0.25}, run={"final_model": "best", "best_metric": "eval/rewards/margins"},
                      optim={"epochs_per_stage": 2})
    summary = loop.train(cfg, records=make_records(16))
    margins = [s["eval/rewards/margins"] for s in summary["stages"]]
    k = summary["final_model"]["stage"]
    assert k == 1 + margins.index(max(margins)) and summary["final_model"]["eval/rewards/margins"] == max(margins)
    a, b = weights(out / "final"), weights(out / f"stage-{k}")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("lora", [False, True])
def test_final_model_best_reloads_an_earlier_stage(tiny_model_dir, tmp_path, monkeypatch, lora):
    monkeypatch.setattr(loop, "best_stage", lambda *a: (1, 0.0))  # whatever the metrics say: stage 1
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, out, curriculum={"schedule": "iterative", "stages": 3},
                      data={"eval_fraction": 0.25}, run={"final_model": "best"},
                      model={"lora": lora, "lora_r": 4}, optim={"lr": 1e-2, "epochs_per_stage": 2})
    assert loop.train(cfg, records=make_records(16))["final_model"]["stage"] == 1
    if lora:  # final/ is merged: base + stage 1's adapter
        import peft

        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        expect = peft.PeftModel.from_pretrained(base, out / "stage-1").merge_and_unload().state_dict()
        last = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "stage-3")
        assert not all(torch.equal(expect[n], p) for n, p in last.merge_and_unload().state_dict().items())
    else:
        expect = weights(out / "stage-1")
        assert not all(torch.equal(expect[n], p) for n, p in weights(out / "stage-3").items())
    got = weights(out / "final")
    for n in got:
        torch.testing.assert_close(got[n], expect[n], rtol=0, atol=1e-6, msg=n)


def test_final_model_best_needs_held_out_pairs(tiny_model_dir, tmp_path):
    with pytest.raises(Exception, match="run.final_model best .*data.eval_fraction > 0"):
        tiny_config(tiny_model_dir, tmp_path, run={"final_model": "best"})


def test_listwise_iterative_grows_lists_and_runs_each_response_once(tiny_model_dir, tmp_path, monkeypatch):
    seen = []
    real = Scorer.policy

    def counting(self, model, encoded):  # the training forwards (reference passes go through Scorer.score)
        seen.append(len(encoded))
        return real(self, model, encoded)

    monkeypatch.setattr(Scorer, "policy", counting)
    cfg = tiny_config(tiny_model_dir, tmp_path / "r", curriculum={"schedule": "iterative", "stages": 3},
                      loss={"name": "plackett-luce"}, optim={"batch_size": 2})
    s = loop.train(cfg, records=make_records(4))
    assert s["unit"] == "list" and [st["pairs"] for st in s["stages"]] == [4, 4, 4]  # lists per stage
    assert [st["pairs_equivalent"] for st in s["stages"]] == [4, 8, 12]
    assert seen == [4, 4, 6, 6, 8, 8]  # 2 lists of 2, 3, 4 responses per micro-batch: each response once
    log = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert [e["list_size"] for e in log] == [2, 2, 3, 3, 4, 4]
    taus = [e["rewards/kendall_tau"] for e in log]
    assert all(-1 <= t <= 1 for t in taus if not math.isnan(t))  # NaN: rewards all equal (policy = reference)
    assert not math.isnan(taus[1])


def test_plackett_luce_on_pairs_trains_exactly_as_dpo(tiny_model_dir, tmp_path):
    """Two responses per prompt: a list is a pair, and the whole run matches dpo step for step."""
    recs = make_records(8, n_responses=2)
    logs = {}
    for name in ("dpo", "plackett-luce"):
        cfg = tiny_config(tiny_model_dir, tmp_path / name, curriculum={"schedule": "random"},
                          loss={"name": name}, optim={"total_updates": 4})
        loop.train(cfg, records=recs)
        logs[name] = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    for a, b in zip(logs["dpo"], logs["plackett-luce"]):
        for k in ("loss", "rewards/chosen", "rewards/margins", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k


@pytest.mark.parametrize("schedule", ["iterative", "single-pass", "cyclical"])
def test_ref_margin_selection_keeps_the_clearest_pairs(tiny_model_dir, tmp_path, schedule, monkeypatch):
    from currydpo import pipeline

    kept = []
    real = pipeline.select_pairs

    def spy(pairs, select, fraction):
        out = real(pairs, select, fraction)
        kept.append((pairs, out))
        return out

    monkeypatch.setattr(pipeline, "select_pairs", spy)
    cfg = tiny_config(tiny_model_dir, tmp_path / "r", curriculum={"schedule": schedule, "stages": 2},
                      data={"select": "ref-margin", "select_fraction": 0.5}, optim={"total_updates": 4})
    s = loop.train(cfg, records=make_records(8))
    (all_pairs, chosen), = kept
    assert s["train_pairs"] == len(chosen) == round(0.5 * len(all_pairs))
    margin = lambda p: -p.difficulty["ref-logratio"]  # noqa: E731
    assert min(map(margin, chosen)) >= max(margin(p) for p in all_pairs if p not in chosen)


def test_all_previous_references_mrpo(tiny_model_dir, tmp_path):
    """MRPO over the initial model and every earlier stage; with η = 0 it is the fixed initial reference."""
    recs = make_records(6)
    logs = {}
    arms = {"mrpo": {"reference": "all-previous", "mrpo_eta": 0.0}, "initial": {"reference": "initial"}}
    runs = []
    for name, curriculum in arms.items():
        cfg = tiny_config(tiny_model_dir, tmp_path / name,
                          curriculum={"schedule": "iterative", "stages": 3, **curriculum}, optim={"total_updates": 6})
        s = loop.train(cfg, records=recs, hooks=loop.Hooks(on_stage_end=[lambda run, k, info: runs.append(run)]))
        logs[name] = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    assert s["reference"] == "initial"
    for a, b in zip(logs["mrpo"], logs["initial"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    # stage 1's policy scored, when it was the policy, every response the later stages train (they combine it)
    run, stage1 = runs[0], torch.load(tmp_path / "mrpo" / "refcache" / "stage-1.pt")
    later = rows_of_stages(run.objective, run.stages, run.stage_updates, run.pairs_per_update, range(1, 3))
    assert later and not torch.isnan(stage1[later]).any()
    cfg = tiny_config(tiny_model_dir, tmp_path / "eta", curriculum={"schedule": "iterative", "stages": 3,
                                                                    "reference": "all-previous"},
                      optim={"total_updates": 6})
    s = loop.train(cfg, records=recs)
    assert s["reference"] == "all-previous" and math.isfinite(s["final_loss"])


def test_iterative_default_is_the_papers_recipe_on_released_pairs(tiny_model_dir, tmp_path):
    """curri-dpo entries -> stages easy, medium, hard; each a fresh DPO run, previous policy as reference."""
    from currydpo.data.formats import convert_rows

    rows = []
    for i, r in enumerate(make_records(8, seed=4)):
        chosen, *rest = [x.text for x in r.responses]  # scores 4..1: rest = R2 (hard), R3, R4 (easy)
        rows.append({lv: {"conversation": [{"role": "user", "content": r.prompt},
                                           {"role": "assistant", "chosen_content": chosen, "rejected_content": rej}]}
                     for lv, rej in zip(("hard", "medium", "easy"), rest)})
    recs = [rec for _, rec in convert_rows(rows, "curri-dpo", source="pairs.json")]
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", curriculum={"schedule": "iterative"},
                      optim={"epochs_per_stage": 1})
    summary = loop.train(cfg, records=recs)
    assert summary["across_stages"] == "restart" and summary["optimizer_resets"] == 2
    assert [s["reference"] for s in summary["stages"]] == ["initial", "stage-1", "stage-2"]
    assert [s["label"] for s in summary["stages"]] == ["rejected rank >=4", "rejected rank 3", "rejected rank 2"]
    assert [s["pairs"] for s in summary["stages"]] == [8, 8, 8]


def test_mixture_reference_is_the_geometric_mixture_of_cached_logps(tiny_model_dir, tmp_path, monkeypatch):
    """curriculum.reference mixture: log ref_k = a log pi_{k-1} + (1 - a) log ref_{k-1}, read from the cache;
    a = 1 trains exactly as the hard swap (previous-stage), a = 0 exactly as the initial reference."""
    recs = make_records(6)
    seen = {}
    real_reference_logps = loop.reference_logps

    def spy(run, *args):
        ref = real_reference_logps(run, *args)
        seen.setdefault(run.cfg.run.output_dir, []).append(ref.clone())
        return ref

    monkeypatch.setattr(loop, "reference_logps", spy)

    def run(name, **curriculum):
        cfg = tiny_config(tiny_model_dir, tmp_path / name, optim={"total_updates": 6},
                          curriculum={"schedule": "iterative", "stages": 3, **curriculum})
        summary = loop.train(cfg, records=recs)
        return summary, weights(tmp_path / name / "final")

    summary, _ = run("half", reference="mixture", reference_mix=0.3)
    cache = {k: torch.load(tmp_path / "half" / "refcache" / f"{k}.pt") for k in ("initial", "stage-1", "stage-2")}
    refs = seen[str(tmp_path / "half")]
    train_rows = [r for r in range(len(cache["initial"])) if not torch.isnan(cache["stage-1"][r])]
    assert train_rows, "the previous policy scores every training response"
    expected = cache["initial"]
    torch.testing.assert_close(refs[0][train_rows], expected[train_rows], rtol=0, atol=0)
    for k, key in ((1, "stage-1"), (2, "stage-2")):  # by hand, from the cached log-probs
        expected = 0.3 * cache[key] + 0.7 * expected
        rows = [r for r in train_rows if not torch.isnan(cache[key][r])]  # what stages k+1.. train
        torch.testing.assert_close(refs[k][rows], expected[rows], rtol=0, atol=1e-12)
        assert not torch.allclose(refs[k][rows], cache[key][rows])  # not the hard swap
    assert summary["reference"] == "mixture" and "alpha 0.3" in summary["stages"][1]["reference"]

    _, hard = run("hard", reference="previous-stage")
    _, alpha1 = run("alpha1", reference="mixture", reference_mix=1.0)
    _, fixed = run("fixed", reference="initial")
    _, alpha0 = run("alpha0", reference="mixture", reference_mix=0.0)
    for name in hard:  # the reference pass batches all training rows instead of the stage's: float tolerance
        torch.testing.assert_close(hard[name], alpha1[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fixed[name], alpha0[name], rtol=0, atol=0)
    assert any(not torch.equal(hard[n], fixed[n]) for n in hard)  # the two ends differ: the test can fail


def test_reference_mix_outside_0_1_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(CurryError, match="curriculum.reference_mix"):
        tiny_config(tiny_model_dir, tmp_path / "r", curriculum={"reference": "mixture", "reference_mix": 1.5})


def test_every_auto_is_resolved_once_and_logged(tiny_model_dir, tmp_path):
    """summary.json logs the resolved config: no field left at auto, booleans as booleans, and the values
    are what the run did (iterative: restart, shuffle, previous-stage; CPU: fp32, chunked head, sdpa)."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "r", curriculum={"schedule": "iterative", "stages": 2},
                      optim={"total_updates": 2})
    assert cfg.curriculum.shuffle_within_stage == "auto" and cfg.optim.across_stages == "auto"
    resolved = loop.train(cfg, records=make_records(4))["resolved"]
    assert "auto" not in resolved.values() and None not in resolved.values()
    assert resolved == {"reference": "previous-stage", "across_stages": "restart", "shuffle_within_stage": True,
                        "reshuffle_passes": True, "split_by": "rank", "precision": "fp32", "lm_head": "chunked",
                        "attention": "sdpa",
                        "gradient_checkpointing": False,
                        "max_tokens_per_micro_batch": resolved["max_tokens_per_micro_batch"],
                        "save_dtype": "float32"}


@pytest.mark.parametrize("schedule,reshuffled", [("random", True), ("single-pair", True), ("single-pass", False)])
def test_no_stage_wraps_silently(tiny_model_dir, tmp_path, capsys, schedule, reshuffled):
    """A stage trained for more than one pass says so; a random order is reshuffled for each later pass, a
    curriculum order repeated as it is; summary.json counts the passes of every stage."""
    seen = []
    cfg = tiny_config(tiny_model_dir, tmp_path / "r", curriculum={"schedule": schedule},
                      optim={"batch_size": 4, "epochs_per_stage": 2})
    summary = loop.train(cfg, records=make_records(8), hooks=loop.Hooks(
        on_batch=[lambda run, update: seen.extend(i for idx in update.micro for i in idx)]))
    n = summary["stages"][0]["pairs"]
    assert summary["stages"][0]["passes"] == pytest.approx(len(seen) / n) and len(seen) >= 2 * n
    first, second = seen[:n], seen[n:2 * n]
    assert sorted(first) == sorted(second) and len(set(first)) == n  # each pass visits every pair once
    assert (first != second) == reshuffled
    err = capsys.readouterr().err
    again = "reshuffled (seeded)" if reshuffled else "the curriculum order repeated"
    assert f"stage 1 makes {summary['stages'][0]['passes']:g} passes over its {n} pairs" in err and again in err


def test_the_run_is_frozen_and_its_progress_is_the_loops(tiny_model_dir, tmp_path):
    """`Run` describes the run and is not edited once built: assigning to it fails, in a hook as anywhere else.
    What the run has done (position, log, counters) is the loop's `Progress`, not the Run's."""
    seen = []

    def try_to_edit(run, k, info):
        with pytest.raises(dataclasses.FrozenInstanceError):
            run.stage_updates = []
        with pytest.raises(dataclasses.FrozenInstanceError):
            run.model = None
        seen.append(k)

    loop.train(tiny_config(tiny_model_dir, tmp_path / "run"), records=make_records(8),
               hooks=loop.Hooks(on_stage_end=[try_to_edit]))
    assert seen and not {"log", "updates_run", "resumed_from", "fingerprint", "online"} & {
        f.name for f in dataclasses.fields(loop.Run)}
