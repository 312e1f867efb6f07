import json
import os

import pytest
import torch

from currydpo.errors import CurryError
from currydpo.generation.generate import (
    MT_BENCH_TEMPERATURES,
    GenerationConfig,
    Prompt,
    answer_turns,
    export_alpaca_eval,
    export_mt_bench,
    generate,
    load_prompts,
    render_prompt,
)

from conftest import SHARED_DATA

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
        {"idx": 7, "Skill": "Math", "Difficulty": 1, "Instruction": "WizardLM test set"},
        "",
    ])
    ps = load_prompts(f)
    assert [p.text for p in ps] == ["plain", "chat", "first turn", "alpaca style", "wizard style", "WizardLM test set"]
    assert [p.id for p in ps] == [0, 1, 81, 3, "w1", 7]
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


# ------------------------------------------------------------------------ multi-turn (MT-bench)

MT_BENCH = os.path.join(SHARED_DATA, "mt_bench", "question.jsonl")
VICUNA = os.path.join(SHARED_DATA, "vicuna_bench", "question.jsonl")


@pytest.mark.skipif(not (os.path.exists(MT_BENCH) and os.path.exists(VICUNA)), reason="shared data absent")
def test_load_fastchat_question_files():
    mt = load_prompts(MT_BENCH)
    assert len(mt) == 80 and all(len(p.turns) == 2 for p in mt) and mt[0].text == mt[0].turns[0]
    cats = {p.category for p in mt}
    assert cats == set(MT_BENCH_TEMPERATURES) and all(isinstance(p.id, int) for p in mt)
    vic = load_prompts(VICUNA)
    assert len(vic) == 80 and all(len(p.turns) == 1 for p in vic)


def test_load_prompts_bad_second_turn(tmp_path):
    f = write_lines(tmp_path / "q.jsonl", [{"question_id": 1, "turns": ["ok", ""]}])
    with pytest.raises(CurryError, match=r"q.jsonl row 1 field 'turns\[1\]': empty text"):
        load_prompts(f)


class RecordingEngine:
    """Answers "A<turn>-<id>" and records every call (prompts as given, the config)."""

    name = "recording"

    def __init__(self):
        self.calls = []

    def generate(self, prompts, cfg, progress=True):
        self.calls.append((list(prompts), cfg))
        return [f"A{len(p.messages) // 2 if isinstance(p, Prompt) and p.messages else 0}-{p.id}" for p in prompts]


def test_answer_turns_feeds_own_answers_batches_across_questions_and_uses_category_temperatures():
    qs = [Prompt(1, "w1", turns=["w1", "w2"], category="writing"), Prompt(2, "m1", turns=["m1", "m2"], category="math"),
          Prompt(3, "s1", turns=["s1"], category="stem"), Prompt(4, "x1", turns=["x1", "x2"], category="writing"),
          Prompt(5, "o1", turns=["o1", "o2"], category="other")]
    engine = RecordingEngine()
    out = answer_turns(engine, qs, GenerationConfig(seed=3), temperatures={**MT_BENCH_TEMPERATURES, "stem": 0.4},
                       default_temperature=0.9, progress=False)
    assert out == [["A0-1", "A1-1"], ["A0-2", "A1-2"], ["A0-3"], ["A0-4", "A1-4"], ["A0-5", "A1-5"]]
    # one call per (turn, temperature): greedy math; stem overridden to 0.4; writing 0.7 batched; other -> default
    got = [([p.id for p in ps], c.temperature, c.greedy, c.seed) for ps, c in engine.calls]
    assert got == [([2], 0.0, True, 3), ([3], 0.4, False, 10_003), ([1, 4], 0.7, False, 20_003),
                   ([5], 0.9, False, 30_003), ([2], 0.0, True, 100_003),
                   ([1, 4], 0.7, False, 110_003), ([5], 0.9, False, 120_003)]
    second = engine.calls[5][0][0]  # turn 2 of question 1: its own first answer between the user turns
    assert second.messages == [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "A0-1"},
                               {"role": "user", "content": "w2"}]
    assert engine.calls[0][0][0] is qs[1]  # turn 1 is the prompt as a single-turn one
    plain = RecordingEngine()
    answer_turns(plain, qs, GenerationConfig(temperature=0.3), progress=False)  # no table: cfg for every turn
    assert {c.temperature for _, c in plain.calls} == {0.3} and len(plain.calls) == 2


def test_answer_turns_with_hf_equals_generate_on_the_conversation(model_and_tokenizer):
    from currydpo.generation.engines import HFEngine

    model, tok = model_and_tokenizer
    qs = [Prompt(1, "the cat", turns=["the cat", "and the dog?"], category="math"),
          Prompt(2, "hello", turns=["hello", "two"], category="coding"), Prompt(3, "sea", turns=["sea"])]
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2)
    out = answer_turns(HFEngine(model, tok), qs, cfg, temperatures=MT_BENCH_TEMPERATURES, progress=False)
    assert [len(a) for a in out] == [2, 2, 1] and all(all(t for t in a) for a in out)
    greedy = GenerationConfig(max_new_tokens=6, do_sample=False)
    msgs = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": out[0][0]},
            {"role": "user", "content": "and the dog?"}]
    assert generate(model, tok, [Prompt(1, "and the dog?", msgs)], greedy, progress=False) == [out[0][1]]
    text, _ = render_prompt(tok, Prompt(1, "x", msgs))
    assert text.count("<|user|>") == 2 and out[0][0] in text


def test_answer_turns_with_vllm_renders_the_conversation(model_and_tokenizer):
    from test_engines import FakeVLLM

    from currydpo.generation.engines import VLLMEngine

    _, tok = model_and_tokenizer
    fake = FakeVLLM()
    engine = VLLMEngine("m", tok, vllm_module=fake)
    out = answer_turns(engine, [Prompt(1, "q1", turns=["q1", "q2"], category="math")],
                       GenerationConfig(max_new_tokens=5, seed=7), temperatures=MT_BENCH_TEMPERATURES, progress=False)
    assert out == [["answer 7", "answer 100007"]]
    texts, params = fake.calls[1]
    assert texts[0] == tok.apply_chat_template([{"role": "user", "content": "q1"}, {"role": "assistant",
                                                "content": "answer 7"}, {"role": "user", "content": "q2"}],
                                               tokenize=False, add_generation_prompt=True)
    assert params[0]["temperature"] == 0.0
