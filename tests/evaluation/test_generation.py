import json

import pytest
import torch

from currydpo.errors import CurryError
from currydpo.evaluation.generation import (
    GenerationConfig,
    Prompt,
    export_alpaca_eval,
    export_mt_bench,
    generate,
    load_prompts,
    render_prompt,
)

# ------------------------------------------------------------------------ prompt files


def write_lines(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_prompts_all_formats(tmp_path):
    f = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "plain"},
        {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "chat"}]},
        {"question_id": 81, "category": "writing", "turns": ["first turn", "second turn"]},
        {"instruction": "alpaca style"},
        {"id": "w1", "text": "wizard style"},
        "",
    ])
    ps = load_prompts(f)
    assert [p.text for p in ps] == ["plain", "chat", "first turn", "alpaca style", "wizard style"]
    assert [p.id for p in ps] == [0, 1, 81, 3, "w1"]
    assert ps[1].messages[0]["role"] == "system" and ps[0].messages is None
    j = tmp_path / "alpaca.json"
    j.write_text(json.dumps([{"instruction": "a", "dataset": "x"}, {"instruction": "b"}]))
    assert [p.text for p in load_prompts(j)] == ["a", "b"]


@pytest.mark.parametrize("row, match", [
    ({"prompt": 3}, r"row 2 field 'prompt': bad type"),
    ({"prompt": "  "}, r"row 2 field 'prompt': empty text"),
    ({"question": "x"}, r"row 2: no prompt field"),
    ({"turns": []}, r"row 2 field 'turns': bad turns"),
    ({"turns": [5]}, r"row 2 field 'turns\[0\]'"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, r"row 2 field 'messages': no user message"),
    ({"messages": [{"role": "user"}]}, r"row 2 field 'messages\[0\]'"),
    ("{not json", r"row 2: invalid JSON"),
    ([1, 2], r"row 2: bad row"),
])
def test_load_prompts_bad_rows_name_file_row_field(tmp_path, row, match):
    f = write_lines(tmp_path / "bad.jsonl", [{"prompt": "ok"}, row])
    with pytest.raises(CurryError, match=match) as e:
        load_prompts(f)
    assert "bad.jsonl" in str(e.value)


def test_load_prompts_missing_and_empty(tmp_path):
    with pytest.raises(CurryError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CurryError, match="no prompts"):
        load_prompts(tmp_path / "empty.jsonl")


def test_generation_config_validation():
    for bad in [dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0), dict(batch_size=0)]:
        with pytest.raises(CurryError):
            GenerationConfig(**bad)
    assert GenerationConfig(temperature=0).greedy and GenerationConfig(do_sample=False).greedy


# ------------------------------------------------------------------------ generation


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # make greedy outputs varied: no special-token argmax, larger random weights
        model.get_input_embeddings().weight[:8] = 0
        for p in model.parameters():
            p.mul_(3)
    return model, tok


PROMPTS = ["the cat", "hello, how are you today? i am fine and the dog ran", "two",
           Prompt("c", "hi there", [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi there"}])]


def test_chat_template_used(model_and_tokenizer):
    _, tok = model_and_tokenizer
    text, templated = render_prompt(tok, "the cat")
    assert templated and text == "<|user|>the cat<|end|><|assistant|>"
    text, _ = render_prompt(tok, PROMPTS[3])
    assert text == "<|system|>be kind<|end|><|user|>hi there<|end|><|assistant|>"
    tok_no_template = type(tok).from_pretrained(tok.name_or_path)
    tok_no_template.chat_template = None
    assert render_prompt(tok_no_template, "raw") == ("raw", False)
    with pytest.raises(CurryError, match="no chat template"):
        render_prompt(tok_no_template, PROMPTS[3])


def test_batched_left_padding_equals_one_by_one(model_and_tokenizer):
    model, tok = model_and_tokenizer
    cfg = GenerationConfig(max_new_tokens=8, do_sample=False, batch_size=4)
    batched = generate(model, tok, PROMPTS, cfg, progress=False)
    single = [generate(model, tok, [p], cfg, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert all(batched) and len(set(batched)) > 1
    assert not any("<|assistant|>" in o or "</s>" in o or "<pad>" in o for o in batched)


def test_sampling_is_seeded(model_and_tokenizer):
    model, tok = model_and_tokenizer
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, batch_size=2, seed=5)
    state = torch.random.get_rng_state()
    a = generate(model, tok, PROMPTS, cfg, progress=False)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
    assert a == generate(model, tok, PROMPTS, cfg, progress=False)
    cfg.seed = 6
    assert a != generate(model, tok, PROMPTS, cfg, progress=False)
    assert model.training is False


def test_exports(tmp_path):
    prompts = [Prompt(81, "q one"), "q two"]
    export_alpaca_eval(tmp_path / "out.json", prompts, ["o1", "o2"], "curry-dpo")
    assert json.loads((tmp_path / "out.json").read_text()) == [
        {"instruction": "q one", "output": "o1", "generator": "curry-dpo"},
        {"instruction": "q two", "output": "o2", "generator": "curry-dpo"}]
    export_mt_bench(tmp_path / "mt.jsonl", [81, 82], ["a1", ["b1", "b2"]], "curry-dpo")
    rows = [json.loads(x) for x in (tmp_path / "mt.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [81, 82]
    assert rows[0]["choices"] == [{"index": 0, "turns": ["a1"]}]
    assert rows[1]["choices"][0]["turns"] == ["b1", "b2"]
    assert all(r["model_id"] == "curry-dpo" and isinstance(r["tstamp"], float) and r["answer_id"] for r in rows)
    assert rows[0]["answer_id"] != rows[1]["answer_id"]
    with pytest.raises(CurryError, match="2 prompts but 1 outputs"):
        export_alpaca_eval(tmp_path / "x.json", prompts, ["o1"], "g")
    assert not (tmp_path / "x.json").exists()
