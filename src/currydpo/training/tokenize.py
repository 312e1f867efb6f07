"""Tokenisation of (prompt, response) pairs into prompt ids + response ids.

The data model is *responses*, not pairs: every unique (prompt, response) of a
record is tokenised exactly once, and the prompt once per record. Pairs are index
pairs into ``encode_records(...)[record]``.

Plain text (prompt is a string)
    prompt ids   = ``tokenizer(prompt)`` with the tokenizer's special tokens (a BOS
                   if the tokenizer adds one);
    response ids = ``tokenizer(response, add_special_tokens=False)`` + EOS (not
                   repeated if the response already ends with EOS).
    This equals TRL's DPOTrainer tokenisation (which tokenises ``prompt + response +
    eos_token`` and splits at the common prefix) whenever the prompt ends on a token
    boundary, e.g. "...?" followed by " answer".

Chat (prompt is a list of messages)
    prompt ids   = chat template over the prompt with ``add_generation_prompt=True``;
    full ids     = chat template over prompt + assistant message(s);
    response ids = ``full[len(prompt ids):]``. The prompt ids must be a prefix of the
    full ids, otherwise the template is not prefix-stable and a `CurryError` is raised
    (training on such a split would condition on a context the model never sees).
    One case is repaired, not refused: the template's *text* is prefix-stable but its
    tokens merge at the seam — a response starting with whitespace joins the generation
    prompt's last token (SmolLM2: the newline ending "<|im_start|>assistant" and a
    response's leading blank line become one three-newline token). Then the response ids
    are the tokens of the text after the rendered prompt, tokenised on their own: exactly
    what the model conditions on when it generates after the prompt. (TRL instead cuts
    the prompt where the ids diverge and trains on a prompt without its last token.)
    A string response is wrapped as one assistant message.

Which records get the chat template (``data.chat_template``)
    ``always``: plain-text prompts become one user turn; ``never``: plain text stays plain;
    ``auto``: as ``always`` when the tokenizer has a chat template. Chat records (message
    lists) always use the template. `encode_for` applies this rule with the run's data
    config; train, eval, compare and pairs all call it, so a response is scored on the
    same tokens everywhere.

Truncation (in this order)
    1. the prompt is cut from the LEFT to ``max_prompt_length`` tokens (the end of
       the prompt, next to the response, is kept);
    2. the response is cut from the RIGHT so that prompt + response <= ``max_length``.
    A response left with 0 tokens is an error; callers validate
    ``max_prompt_length < max_length`` when the config is built.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ..data.records import Record, Text, as_chat
from ..errors import CurryError
from ..progress import progress_bar

RECORDS_PER_BATCH = 512  # records tokenised per tokenizer call: fast tokenizers encode a batch on all cores


def _ids(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) and x.dtype == np.int32 else np.asarray(x, dtype=np.int32)


class Encoded:
    """Token ids of one (prompt, response): the model input is ``prompt_ids + response_ids``.

    Stored compactly as int32 arrays (the responses of one prompt share its array; a cache file's
    records are views into one buffer): a Python int list costs ~9x the memory. ``prompt_ids`` and
    ``response_ids`` give tuples (hashable: the prompt groups packed sequences)."""

    __slots__ = ("prompt", "response")

    def __init__(self, prompt_ids, response_ids):
        self.prompt = _ids(prompt_ids)
        self.response = _ids(response_ids)

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return tuple(self.prompt.tolist())

    @property
    def response_ids(self) -> tuple[int, ...]:
        return tuple(self.response.tolist())

    def __len__(self) -> int:
        return len(self.prompt) + len(self.response)

    def __eq__(self, other) -> bool:
        return isinstance(other, Encoded) and np.array_equal(self.prompt, other.prompt) and \
            np.array_equal(self.response, other.response)

    def __hash__(self) -> int:
        return hash((self.prompt_ids, self.response_ids))

    def __repr__(self) -> str:
        return f"Encoded(prompt_ids={self.prompt_ids}, response_ids={self.response_ids})"


def _template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    out: Any = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return [int(i) for i in ids]


def _has_chat_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def _prompt_ids(tokenizer, prompt: Text) -> list[int]:
    """Untruncated prompt ids (plain: with special tokens; chat: template + generation prompt)."""
    if isinstance(prompt, str):
        return [int(i) for i in tokenizer(prompt)["input_ids"]]
    if not _has_chat_template(tokenizer):
        raise CurryError(
            "the data is chat (the prompt is a list of messages) but the tokenizer has no chat template; "
            "use a tokenizer with a chat_template, or give plain-text prompts")
    return _template_ids(tokenizer, prompt, add_generation_prompt=True)


def _response_ids(tokenizer, prompt: Text, prompt_ids: Sequence[int], response: Text) -> list[int]:
    """Untruncated response ids given the untruncated prompt ids."""
    if isinstance(prompt, str):
        if not isinstance(response, str):
            raise CurryError("the prompt is plain text but a response is a message list; "
                             "use the same format (both strings or both chat messages) for prompt and responses")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise CurryError("the tokenizer has no eos_token; set tokenizer.eos_token so responses can end with it")
        ids = [int(i) for i in tokenizer(response, add_special_tokens=False)["input_ids"]]
        if not ids or ids[-1] != eos:
            ids.append(int(eos))
        return ids
    messages = [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)
    full = _template_ids(tokenizer, list(prompt) + messages, add_generation_prompt=False)
    n = len(prompt_ids)
    if full[:n] != list(prompt_ids):
        return _split_at_text_seam(tokenizer, list(prompt), messages, prompt_ids, full)
    return full[n:]


def _split_at_text_seam(tokenizer, prompt: list[dict], messages: list[dict], prompt_ids: Sequence[int],
                        full: list[int]) -> list[int]:
    """Response ids when the prompt ids are not a token prefix of the full ids (see the module doc)."""
    text_prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    text_full = tokenizer.apply_chat_template(prompt + messages, tokenize=False)
    if isinstance(text_prompt, str) and isinstance(text_full, str) and text_full.startswith(text_prompt):
        return [int(i) for i in tokenizer(text_full[len(text_prompt):], add_special_tokens=False)["input_ids"]]
    n = len(prompt_ids)
    k = next((i for i, (a, b) in enumerate(zip(full, prompt_ids)) if a != b), min(n, len(full)))
    raise CurryError(
        "the chat template is not prefix-stable: the prompt rendered with add_generation_prompt=True is not a "
        f"prefix of prompt + response (they differ from token {k} of {n}: prompt has "
        f"{tokenizer.decode(list(prompt_ids[k:k + 8]))!r}, full has {tokenizer.decode(full[k:k + 8])!r}); "
        "use a chat template whose generation prompt is exactly the start of the assistant turn")


def _truncate(prompt_ids: Sequence[int], response_ids: Sequence[int], max_length: int,
              max_prompt_length: int) -> Encoded:
    p = tuple(prompt_ids[-max_prompt_length:]) if len(prompt_ids) > max_prompt_length else tuple(prompt_ids)
    if not p:
        raise CurryError("the prompt tokenised to 0 tokens; a prompt needs at least one token "
                         "(the first response token must be predicted from something)")
    r = tuple(response_ids[: max(0, max_length - len(p))])
    if not r:
        raise CurryError(
            f"a response has 0 tokens after truncation (prompt {len(p)} tokens, response {len(response_ids)} "
            f"tokens, max_length {max_length}, max_prompt_length {max_prompt_length}); "
            "set max_prompt_length below max_length, or drop empty responses")
    return Encoded(p, r)


def encode(tokenizer, prompt: Text, response: Text, *, max_length: int, max_prompt_length: int) -> Encoded:
    """Tokenise one (prompt, response) and truncate it (rules in the module docstring)."""
    pids = _prompt_ids(tokenizer, prompt)
    return _truncate(pids, _response_ids(tokenizer, prompt, pids, response), max_length, max_prompt_length)


def encode_records(records: Iterable[Record], tokenizer, *, max_length: int, max_prompt_length: int,
                   progress: bool = True) -> list[list[Encoded]]:
    """Tokenise every response of every record: result[record][response].

    The prompt is tokenised once per record, each response once, ``RECORDS_PER_BATCH`` records per
    tokenizer call (a fast tokenizer encodes a batch in parallel). The tokens are those of `encode`,
    one sequence at a time (tests/training/test_tokenize.py compares both).
    """
    records = list(records)
    out: list[list[Encoded]] = []
    with progress_bar(total=len(records), desc="tokenising", unit="prompt", enabled=progress) as bar:
        for start in range(0, len(records), RECORDS_PER_BATCH):
            block = records[start:start + RECORDS_PER_BATCH]
            try:
                out.extend(_encode_block(tokenizer, block, max_length, max_prompt_length))
            except CurryError:  # again one record at a time: the error names the record and response
                out.extend(_encode_serial(tokenizer, block, max_length, max_prompt_length))
            bar.update(len(block))
    return out


def _encode_serial(tokenizer, records: list[Record], max_length: int, max_prompt_length: int) -> list[list[Encoded]]:
    out = []
    for rec in records:
        pids = _prompt_ids(tokenizer, rec.prompt)
        encoded = []
        for i, resp in enumerate(rec.responses):
            try:
                rids = _response_ids(tokenizer, rec.prompt, pids, resp.text)
                encoded.append(_truncate(pids, rids, max_length, max_prompt_length))
            except CurryError as e:
                raise CurryError(f"record {rec.id!r} response {i}: {e}") from e
        out.append(encoded)
    return out


def _encode_block(tokenizer, records: list[Record], max_length: int, max_prompt_length: int) -> list[list[Encoded]]:
    """`_encode_serial` with one tokenizer call per kind (plain, chat) for the prompts and one for the responses.
    Raises CurryError on any record the serial path would refuse (the caller re-runs it to name the record)."""
    out: list[list[Encoded] | None] = [None] * len(records)
    for chat in (False, True):
        idx = [j for j, r in enumerate(records) if isinstance(r.prompt, str) != chat]
        if not idx:
            continue
        recs = [records[j] for j in idx]
        prompts, responses = (_chat_ids if chat else _plain_ids)(tokenizer, recs)
        for j, rec, pids, rids in zip(idx, recs, prompts, responses):
            p = _ids(pids[-max_prompt_length:])  # one array, shared by the record's responses
            if not len(p) or max_length <= len(p) or not all(rids):  # a sequence the serial path refuses
                raise CurryError("an empty prompt or response after truncation")
            out[j] = [Encoded(p, _ids(r[:max_length - len(p)])) for r in rids]
    return out  # type: ignore[return-value]


def _plain_ids(tokenizer, records: list[Record]) -> tuple[list[list[int]], list[list[list[int]]]]:
    eos = tokenizer.eos_token_id
    if eos is None or any(not isinstance(r.text, str) for rec in records for r in rec.responses):
        raise CurryError("no eos token, or a message-list response to a plain prompt")
    prompts = tokenizer([rec.prompt for rec in records])["input_ids"]
    flat = tokenizer([r.text for rec in records for r in rec.responses], add_special_tokens=False)["input_ids"]
    for ids in flat:
        if not ids or ids[-1] != eos:
            ids.append(eos)
    return prompts, _regroup(records, flat)


def _chat_ids(tokenizer, records: list[Record]) -> tuple[list[list[int]], list[list[list[int]]]]:
    if not _has_chat_template(tokenizer):
        raise CurryError("no chat template")
    prompts = _template_batch(tokenizer, [list(rec.prompt) for rec in records], add_generation_prompt=True)
    turns = [(rec, i, [{"role": "assistant", "content": r.text}] if isinstance(r.text, str) else list(r.text))
             for rec in records for i, r in enumerate(rec.responses)]
    full = _template_batch(tokenizer, [list(rec.prompt) + messages for rec, _, messages in turns],
                           add_generation_prompt=False)
    at = {id(rec): j for j, rec in enumerate(records)}
    flat = []
    for (rec, _, messages), ids in zip(turns, full):
        pids = prompts[at[id(rec)]]
        n = len(pids)
        flat.append(ids[n:] if ids[:n] == pids else _split_at_text_seam(tokenizer, list(rec.prompt), messages,
                                                                          pids, ids))
    return prompts, _regroup(records, flat)


def _template_batch(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool) -> list[list[int]]:
    """The chat template over many conversations in one call: transformers renders each and tokenises the batch."""
    out: Any = tokenizer.apply_chat_template(conversations, tokenize=True, add_generation_prompt=add_generation_prompt,
                                             return_dict=True)
    return [list(ids) for ids in out["input_ids"]]


def _regroup(records: list[Record], flat: list) -> list[list]:
    out, k = [], 0
    for rec in records:
        out.append(flat[k:k + len(rec.responses)])
        k += len(rec.responses)
    return out


def uses_chat_template(tokenizer, mode: str) -> bool:
    """Whether plain-text prompts are wrapped as a user turn (``data.chat_template``, module doc)."""
    return mode == "always" or (mode == "auto" and _has_chat_template(tokenizer))


def encode_for(tokenizer, records: list[Record], data, progress: bool = True) -> list[list[Encoded]]:
    """The one tokenisation rule of a run: ``data`` (a `DataConfig`) gives the chat-template mode and
    the length limits. Used by training, held-out metrics, `eval`, `compare` and `pairs`."""
    chat = uses_chat_template(tokenizer, data.chat_template)
    return encode_records(as_chat(records) if chat else records, tokenizer, max_length=data.max_length,
                          max_prompt_length=data.max_prompt_length, progress=progress)
