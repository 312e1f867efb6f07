"""The generation engine interface: `hf` is batched generate; `vllm` maps sampling params one to one."""

import sys
from types import SimpleNamespace

import pytest

from currydpo.cli import main
from currydpo.errors import CurryError
from currydpo.generation.engines import VLLM_MISSING, HFEngine, VLLMEngine, make_engine, vllm_sampling_kwargs
from currydpo.generation.generate import GenerationConfig, generate


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_hf_engine_is_batched_generate_and_seeded(tiny):
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, batch_size=2, seed=5)
    engine = make_engine("hf", model=model, tokenizer=tok)
    assert isinstance(engine, HFEngine) and engine.name == "hf"
    prompts = ["the cat", "a good answer", "hello"]
    a = engine.generate(prompts, cfg, progress=False)
    assert a == generate(model, tok, prompts, cfg, progress=False) == engine.generate(prompts, cfg, progress=False)
    other = engine.generate(prompts, GenerationConfig(max_new_tokens=6, temperature=1.0, batch_size=2, seed=6),
                            progress=False)
    assert other != a  # the seed fixes the samples; another seed gives others


class FakeVLLM:
    """The two names of vllm the engine uses, recording what it is given."""

    def __init__(self):
        self.llm_kwargs, self.calls = None, []
        fake = self

        class LLM:
            def __init__(self, **kw):
                fake.llm_kwargs = kw

            def generate(self, texts, params, use_tqdm=True):
                fake.calls.append((texts, params))
                return [SimpleNamespace(outputs=[SimpleNamespace(text=f" answer {p['seed']} ")]) for p in params]

        self.LLM = LLM
        self.SamplingParams = lambda **kw: kw


def test_vllm_sampling_params_map_one_to_one():
    cfg = GenerationConfig(max_new_tokens=17, temperature=0.7, top_p=0.9, seed=3)
    assert vllm_sampling_kwargs(cfg, 11) == {"n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": -1,
                                             "max_tokens": 17, "seed": 11, "skip_special_tokens": True}
    greedy = vllm_sampling_kwargs(GenerationConfig(do_sample=False, top_p=0.5), 0)
    assert (greedy["temperature"], greedy["top_p"]) == (0.0, 1.0)
    assert vllm_sampling_kwargs(GenerationConfig(temperature=0.0), 0)["temperature"] == 0.0


def test_vllm_engine_loads_the_directory_renders_like_hf_and_seeds_per_request(tiny):
    _, tok = tiny
    fake = FakeVLLM()
    engine = VLLMEngine("runs/x/stage-2", tok, seed=4, gpu_memory_utilization=0.3, vllm_module=fake)
    assert fake.llm_kwargs == {"model": "runs/x/stage-2", "seed": 4, "gpu_memory_utilization": 0.3,
                               "trust_remote_code": False, "dtype": "auto"}
    out = engine.generate(["p1", "p2"], GenerationConfig(max_new_tokens=5, seed=100), progress=False)
    assert out == ["answer 100", "answer 101"]  # stripped, request i seeded cfg.seed + i
    texts, params = fake.calls[0]
    assert texts[0] == tok.apply_chat_template([{"role": "user", "content": "p1"}], tokenize=False,
                                               add_generation_prompt=True)  # the chat template, as hf renders it
    assert [p["max_tokens"] for p in params] == [5, 5]


def test_vllm_missing_is_a_one_line_error(monkeypatch, tmp_path, tiny_model_dir, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(CurryError, match=r"pip install 'currydpo\[vllm\]'"):
        make_engine("vllm", path="some/dir")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "the cat"}\n')
    code = main(["eval", str(tiny_model_dir), "--prompts", str(prompts), "--engine", "vllm", "--no-progress",
                 "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"currydpo eval: error: {VLLM_MISSING}"]
    with pytest.raises(CurryError, match="choose one of: hf, vllm"):
        make_engine("tgi")


def test_eval_engine_hf_writes_answers(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "the cat"}\n{"prompt": "hello"}\n')
    assert main(["eval", str(tiny_model_dir), "--prompts", str(prompts), "--engine", "hf", "--max-new-tokens", "4",
                 "--no-progress", "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "alpaca_eval.json").exists()


def test_vllm_samples_carry_vllms_ids_with_eos_only_where_sampled(tiny):
    _, tok = tiny
    eos, extra = tok.eos_token_id, 7  # extra: a model's second EOS id (generation_config), vLLM's stop_reason
    outs = [("length", None, [5, 6, 8]),  # cut at max_tokens: no EOS appended
            ("stop", None, [5, eos]),  # EOS in token_ids (kept once)
            ("stop", None, [5, 6]),  # a vLLM that leaves the EOS out: put back
            ("stop", extra, [5, extra])]  # ended on the model's other EOS id
    fake = FakeVLLM()

    def generate(texts, params, use_tqdm=True):
        return [SimpleNamespace(prompt_token_ids=[1, 2, i], outputs=[SimpleNamespace(
            text=f" a{i} ", token_ids=ids, finish_reason=why, stop_reason=stop)])
            for i, (why, stop, ids) in enumerate(outs)]

    engine = VLLMEngine("m", tok, llm=SimpleNamespace(generate=generate), vllm_module=fake)
    got = engine.samples(["p"] * 4, GenerationConfig(max_new_tokens=3), progress=False)
    assert [(s.answer_ids, s.eos) for s in got] == [((5, 6, 8), False), ((5, eos), True), ((5, 6, eos), True),
                                                    ((5, extra), True)]
    assert [s.prompt_ids for s in got] == [(1, 2, i) for i in range(4)] and got[0].text == "a0"
