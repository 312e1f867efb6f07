"""The KL estimate scores exactly the sampled tokens: the prompt ids as fed, the answer through a sampled EOS,
no EOS appended to an answer cut at max_new_tokens (evaluation/evaluate.py)."""

import copy

import pytest
import torch

from currydpo.evaluation.evaluate import evaluate_model
from currydpo.generation.engines import HFEngine
from currydpo.generation.generate import GenerationConfig, Prompt, render_prompt


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """The tiny model as reference and, as policy, a copy whose EOS logit is raised so that some answers
    end in EOS within a few tokens and others are cut."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        h = policy.model(**tok(["the cat sat on the mat", "hello, how are"], return_tensors="pt", padding=True))
        direction = h.last_hidden_state.mean(dim=(0, 1))
        policy.get_output_embeddings().weight[tok.eos_token_id] = 10.0 * direction / direction.norm() ** 2
    return policy, reference, tok


def hand_logp(model, prompt_ids, answer_ids) -> float:
    """sum_j log softmax(logits at the position before answer token j)[answer token j], one sequence, no batching."""
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # (T, V)
    P = len(prompt_ids)
    return sum(torch.log_softmax(logits[P - 1 + j], -1)[t].item() for j, t in enumerate(answer_ids))


def test_kl_is_the_log_ratio_over_the_sampled_ids(models):
    policy, reference, tok = models
    eos = tok.eos_token_id
    chat = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on the mat"},
            {"role": "user", "content": "and the dog?"}]
    prompts = ["the cat", "hello, how", "a good answer", "please write", "what is two plus two?",
               Prompt("c1", "and the dog?", chat), Prompt("c2", "hello", [{"role": "user", "content": "hello"}]),
               "the sea and the sky"]
    gen = GenerationConfig(max_new_tokens=6, temperature=1.0, batch_size=3, seed=1)
    samples = HFEngine(policy, tok).samples(prompts, gen, progress=False)

    ended = [s for s in samples if s.eos]
    cut = [s for s in samples if not s.eos]
    assert ended and cut  # both kinds, so the test sees both rules
    for s in ended:
        assert s.answer_ids[-1] == eos and eos not in s.answer_ids[:-1]  # through the EOS, no padding after it
    for s in cut:
        assert len(s.answer_ids) == gen.max_new_tokens and eos not in s.answer_ids  # cut: no EOS appended
    for p, s in zip(prompts, samples):  # the prompt as fed: the chat template (multi-turn too), no padding
        assert list(s.prompt_ids) == tok(render_prompt(tok, p)[0], add_special_tokens=False)["input_ids"]
        assert s.text == tok.decode(s.answer_ids, skip_special_tokens=True).strip()

    m, answers = evaluate_model(policy, tok, prompts=prompts, gen=gen, reference=reference, progress=False)
    assert answers == [s.text for s in samples]
    direct = [hand_logp(policy, s.prompt_ids, s.answer_ids) - hand_logp(reference, s.prompt_ids, s.answer_ids)
              for s in samples]
    assert m["kl"] == pytest.approx(sum(direct) / len(direct), rel=1e-5, abs=1e-6)
    assert abs(m["kl"]) > 0.1  # a policy that moved: the check is not 0 == 0
