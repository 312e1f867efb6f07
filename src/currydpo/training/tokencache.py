"""Token ids on disk: a run's tokenisation done once, read back by later runs and by the other processes.

The file is keyed by a fingerprint of everything that decides the tokens: the tokenizer (its full
serialisation, special tokens and chat template), the tokenisation rule (`tokenize.encode_for`: chat
mode and length limits, ``RULE_VERSION``) and the text of every record. Any change gives another file;
a file is never read for other inputs. Stored as flat int32 arrays (one per kind, with offsets); loaded,
each `Encoded` is a view into them.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..data.records import Record
from ..io import atomic_path
from .tokenize import Encoded, encode_for, uses_chat_template

RULE_VERSION = 1  # bump when tokenize.py changes the tokens it gives for the same inputs


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(json.dumps([str(tokenizer.special_tokens_map), tokenizer.eos_token_id, tokenizer.bos_token_id,
                         getattr(tokenizer, "chat_template", None)], default=str).encode())
    return h.hexdigest()


def tokens_fingerprint(tokenizer, records: list[Record], data) -> str:
    """The key of a tokenisation: tokenizer, rule (``data``: a `DataConfig`) and the records' texts."""
    h = hashlib.sha256(tokenizer_fingerprint(tokenizer).encode())
    h.update(json.dumps([RULE_VERSION, uses_chat_template(tokenizer, data.chat_template), data.max_length,
                         data.max_prompt_length]).encode())
    for r in records:
        h.update(json.dumps([r.prompt, [x.text for x in r.responses]]).encode())
    return h.hexdigest()


def encode_cached(tokenizer, records: list[Record], data, cache_dir: str | None, accelerator=None,
                  progress: bool = True) -> list[list[Encoded]]:
    """`tokenize.encode_for`, read from ``cache_dir`` when this tokenisation was done before, else done and
    written there. With several processes the main one tokenises and writes, the others then read its file."""
    if cache_dir is None:
        return encode_for(tokenizer, records, data, progress)
    path = os.path.join(cache_dir, "tokens", f"{tokens_fingerprint(tokenizer, records, data)}.npz")
    if accelerator is None or accelerator.num_processes == 1:
        return load_or_encode(path, tokenizer, records, data, progress, write=True)
    with accelerator.main_process_first():
        return load_or_encode(path, tokenizer, records, data, progress and accelerator.is_main_process,
                              write=accelerator.is_main_process)


def load_or_encode(path: str, tokenizer, records: list[Record], data, progress: bool,
                   write: bool) -> list[list[Encoded]]:
    if os.path.exists(path):
        try:
            return load(path)
        except (OSError, ValueError, KeyError, EOFError):  # a damaged cache file: tokenise again, rewrite it
            pass
    encoded = encode_for(tokenizer, records, data, progress)
    if write:
        save(path, encoded)
    return encoded


def save(path: str, encoded: list[list[Encoded]]) -> None:
    prompts = [rec[0].prompt if rec else np.zeros(0, np.int32) for rec in encoded]
    responses = [e.response for rec in encoded for e in rec]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, prompt_tokens=_concat(prompts), prompt_offsets=_offsets(prompts),
                 response_tokens=_concat(responses), response_offsets=_offsets(responses),
                 responses_per_record=np.array([len(rec) for rec in encoded], dtype=np.int64))


def load(path: str) -> list[list[Encoded]]:
    with np.load(path) as z:
        pt, po, rt, ro, per = (z[k] for k in ("prompt_tokens", "prompt_offsets", "response_tokens",
                                              "response_offsets", "responses_per_record"))
    po, ro, out, j = po.tolist(), ro.tolist(), [], 0
    for i, n in enumerate(per.tolist()):
        prompt = pt[po[i]:po[i + 1]]
        out.append([Encoded(prompt, rt[ro[k]:ro[k + 1]]) for k in range(j, j + n)])
        j += n
    return out


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)


def _offsets(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(a) for a in arrays], dtype=np.int64)]).astype(np.int64)
