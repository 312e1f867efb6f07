"""Tokenisation: plain vs chat, EOS, truncation rules, the once-per-prompt data model."""

import pytest
from transformers import AutoTokenizer

from currydpo.data.records import Record, Response
from currydpo.errors import CurryError
from currydpo.training.tokenize import Encoded, encode, encode_records

BIG = dict(max_length=512, max_prompt_length=256)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_plain_text(tok):
    e = encode(tok, "what is two plus two?", " it is four.", **BIG)
    assert isinstance(e, Encoded)
    assert list(e.prompt_ids) == tok("what is two plus two?")["input_ids"]
    assert list(e.response_ids) == tok(" it is four.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(e) == len(e.prompt_ids) + len(e.response_ids)
    # a response that already ends with EOS does not get a second one
    e2 = encode(tok, "what is two plus two?", " it is four." + tok.eos_token, **BIG)
    assert e2 == e


def test_plain_text_keeps_bos_if_tokenizer_adds_one(tok):
    from tokenizers import processors

    tok2 = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok2.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    e = encode(tok2, "hello", " there", **BIG)
    assert e.prompt_ids[0] == tok.bos_token_id
    assert tok.bos_token_id not in e.response_ids and e.response_ids[-1] == tok.eos_token_id


def test_chat(tok):
    prompt = [{"role": "user", "content": "what is two plus two?"}]
    e = encode(tok, prompt, "it is four.", **BIG)
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "it is four."}],
                                   tokenize=True, return_dict=True)["input_ids"]
    gen = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert list(e.prompt_ids) == gen
    assert list(e.prompt_ids + e.response_ids) == full
    assert tok.decode(e.response_ids) == "it is four.</s>"
    assert tok.decode(e.prompt_ids).endswith("<|assistant|>")
    # a message-list response gives the same ids as the string
    assert encode(tok, prompt, [{"role": "assistant", "content": "it is four."}], **BIG) == e


def test_chat_errors(tok):
    prompt = [{"role": "user", "content": "hi"}]
    no_template = AutoTokenizer.from_pretrained(tok.name_or_path)
    no_template.chat_template = None
    with pytest.raises(CurryError, match="no chat template"):
        encode(no_template, prompt, "hello", **BIG)
    unstable = AutoTokenizer.from_pretrained(tok.name_or_path)
    unstable.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                              "{% if add_generation_prompt %}<|end|><|assistant|>{% endif %}")
    with pytest.raises(CurryError, match="prefix-stable"):
        encode(unstable, prompt, "hello", **BIG)
    with pytest.raises(CurryError, match="same format"):
        encode(tok, "plain prompt", [{"role": "assistant", "content": "x"}], **BIG)


def test_tokens_merging_at_the_seam_are_split_as_generated(tok):
    # A ChatML-like generation prompt ending in a newline, and a tokenizer with a three-newline token:
    # tokenised together, the prompt's last newline and a response's leading blank line merge.
    merging = AutoTokenizer.from_pretrained(tok.name_or_path)
    merging.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>{% endfor %}"
                             "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    merging.add_tokens(["\n\n\n"])
    prompt = [{"role": "user", "content": "hi"}]
    gen = merging.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = merging.apply_chat_template(prompt + [{"role": "assistant", "content": "\n\nhello"}], tokenize=True,
                                       return_dict=True)["input_ids"]
    assert full[:len(gen)] != gen  # the seam merged
    e = encode(merging, prompt, "\n\nhello", **BIG)
    assert list(e.prompt_ids) == gen  # the prompt exactly as at generation time
    assert e.response_ids == tuple(merging("\n\nhello<|end|>", add_special_tokens=False)["input_ids"])
    assert merging.decode(list(e.prompt_ids + e.response_ids)) == merging.decode(full)  # the same text


def test_truncation_rules(tok):
    prompt, response = "the cat sat on the mat and the dog ran in the park.", " hello, how are you today?"
    full = encode(tok, prompt, response, **BIG)
    P, R = len(full.prompt_ids), len(full.response_ids)
    assert P > 6 and R > 4
    # prompt cut from the left: its end is kept
    e = encode(tok, prompt, response, max_length=512, max_prompt_length=4)
    assert e.prompt_ids == full.prompt_ids[-4:] and e.response_ids == full.response_ids
    # then the response cut from the right so the total fits
    e = encode(tok, prompt, response, max_length=6, max_prompt_length=4)
    assert e.prompt_ids == full.prompt_ids[-4:] and e.response_ids == full.response_ids[:2] and len(e) == 6
    e = encode(tok, prompt, response, max_length=P + 3, max_prompt_length=P)
    assert e.prompt_ids == full.prompt_ids and e.response_ids == full.response_ids[:3]
    # nothing left for the response
    with pytest.raises(CurryError, match="0 tokens after truncation"):
        encode(tok, prompt, response, max_length=4, max_prompt_length=4)


def test_encode_records_tokenises_prompt_once(tok, monkeypatch):
    recs = [
        Record("a", "what is two plus two?", [Response(" four.", 5.0), Response(" five.", 1.0), Response(" 4", 3.0)]),
        Record("b", [{"role": "user", "content": "hello"}], [Response("hi!", 2.0), Response("go away", 1.0)]),
    ]
    calls = {"plain": 0, "chat_gen": 0}
    orig_call, orig_tpl = type(tok).__call__, type(tok).apply_chat_template

    def counting_call(self, text, *a, **kw):
        if kw.get("add_special_tokens", True):
            calls["plain"] += 1
        return orig_call(self, text, *a, **kw)

    def counting_tpl(self, messages, *a, **kw):
        calls["chat_gen"] += bool(kw.get("add_generation_prompt"))
        return orig_tpl(self, messages, *a, **kw)

    monkeypatch.setattr(type(tok), "__call__", counting_call)
    monkeypatch.setattr(type(tok), "apply_chat_template", counting_tpl)
    out = encode_records(recs, tok, progress=False, **BIG)
    assert calls == {"plain": 1, "chat_gen": 1}
    assert [len(r) for r in out] == [3, 2]
    monkeypatch.undo()
    assert out[0][1] == encode(tok, recs[0].prompt, " five.", **BIG)
    assert out[1][0] == encode(tok, recs[1].prompt, "hi!", **BIG)


def test_encode_records_names_the_record(tok):
    recs = [Record("r7", "the cat sat on the mat", [Response(" a", 1.0), Response(" b", 2.0)])]
    with pytest.raises(CurryError, match="record 'r7' response 0"):
        encode_records(recs, tok, max_length=3, max_prompt_length=3, progress=False)


def _one_at_a_time(tok, records, max_length, max_prompt_length):
    return [[encode(tok, r.prompt, x.text, max_length=max_length, max_prompt_length=max_prompt_length)
             for x in r.responses] for r in records]


@pytest.mark.parametrize("limits", [BIG, dict(max_length=14, max_prompt_length=6), dict(max_length=9,
                                                                                         max_prompt_length=3)])
def test_batched_tokens_equal_one_at_a_time_plain_and_chat(tok, limits):
    """The batched path (one tokenizer call per block of records) gives `encode`'s tokens bit for bit: plain
    and chat records, mixed in one block, prompt and response truncation included."""
    from currydpo.data.records import as_chat
    from currydpo.training import tokenize

    from conftest import make_records

    plain = make_records(40, 4, seed=3)
    chat = as_chat(make_records(30, 3, seed=4))
    mixed = plain[:10] + chat[:10] + plain[10:]
    for records in (plain, chat, mixed):
        got = encode_records(records, tok, progress=False, **limits)
        assert got == _one_at_a_time(tok, records, **limits)
        if limits is not BIG:  # the limits did cut something
            assert any(len(e) == limits["max_length"] or len(e.prompt) == limits["max_prompt_length"]
                       for rec in got for e in rec)
    small = tokenize.RECORDS_PER_BATCH
    try:  # blocks split inside the data give the same tokens
        tokenize.RECORDS_PER_BATCH = 7
        assert encode_records(mixed, tok, progress=False, **BIG) == _one_at_a_time(tok, mixed, **BIG)
    finally:
        tokenize.RECORDS_PER_BATCH = small


def test_token_ids_are_stored_compactly(tok):
    """int32 arrays, the prompt array shared by the responses of its record (no Python int lists)."""
    import numpy as np

    out = encode_records([Record("a", "what is two plus two?", [Response(" four.", 5.0), Response(" five.", 1.0)])],
                         tok, progress=False, **BIG)
    a, b = out[0]
    assert a.prompt.dtype == np.int32 and a.response.dtype == np.int32
    assert a.prompt is b.prompt
