"""Sampling answers from a policy for evaluation prompts, and exporting them.

`load_prompts` reads evaluation prompt files (JSONL or a JSON list): plain
``prompt`` strings, chat ``messages``, MT-bench / Vicuna / WizardLM question files
(``question_id`` + ``turns`` — the first turn is used) and ``instruction`` / ``text``
rows (AlpacaEval, WizardLM). `generate` samples completions in left-padded batches,
reproducibly for a seed. The exports write the formats AlpacaEval and FastChat's
MT-bench judge read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data.records import check_messages
from ..errors import BadRow, CurryError
from ..io import bars_off, write_json, write_jsonl

PROMPT_KEYS = ("messages", "prompt", "turns", "instruction", "text")


@dataclass
class Prompt:
    """One evaluation prompt. ``messages`` is set for chat prompts (then ``text`` is the
    last user turn, which is what judges and exports show); ``id`` is the file's
    ``question_id``/``id`` or the 0-based row index."""

    id: Any
    text: str
    messages: list[dict[str, str]] | None = None


def _row_to_prompt(row: Any, source: str, line: int, index: int) -> Prompt:
    if not isinstance(row, dict):
        raise BadRow(source, line, None, "bad row", f"expected a JSON object, got {type(row).__name__}")
    pid = row.get("question_id", row.get("id", index))
    key = next((k for k in PROMPT_KEYS if k in row), None)
    if key is None:
        raise BadRow(source, line, None, "no prompt field",
                     f"expected one of {', '.join(PROMPT_KEYS)}; got keys {sorted(row)}")
    value = row[key]
    if key == "messages":
        msgs = check_messages(value, source, line, key)
        users = [m["content"] for m in msgs if m["role"] == "user"]
        if not users:
            raise BadRow(source, line, key, "no user message", "a chat prompt needs at least one user turn")
        return Prompt(pid, users[-1], msgs)
    if key == "turns":
        if not isinstance(value, list) or not value:
            raise BadRow(source, line, key, "bad turns", "expected a non-empty list of strings")
        value, key = value[0], "turns[0]"
    if not isinstance(value, str):
        raise BadRow(source, line, key, "bad type", f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(source, line, key, "empty text")
    return Prompt(pid, value)


def load_prompts(path: str | os.PathLike) -> list[Prompt]:
    """Read prompts from a JSONL file (one object per line) or a JSON file holding a list.

    Bad rows raise `CurryError` naming the file, the row (1-based line, or list index
    for JSON lists) and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise CurryError(f"prompt file {path} not found")
    source = str(path)
    text = path.read_text(encoding="utf-8")
    prompts: list[Prompt] = []
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except ValueError as e:
            raise CurryError(f"{source}: not valid JSON ({e})") from e
        for i, row in enumerate(rows):
            prompts.append(_row_to_prompt(row, source, i, i))
    else:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise BadRow(source, line_no, None, "invalid JSON", str(e)) from e
            prompts.append(_row_to_prompt(row, source, line_no, len(prompts)))
    if not prompts:
        raise CurryError(f"{source}: no prompts found; expected JSONL rows with one of {', '.join(PROMPT_KEYS)}")
    return prompts


@dataclass
class GenerationConfig:
    """How answers are sampled. ``temperature=0`` or ``do_sample=False`` means greedy."""

    max_new_tokens: int = 64  # tokens generated per answer at most
    temperature: float = 0.7  # softmax temperature when sampling
    top_p: float = 1.0  # nucleus sampling mass (1.0 = off); top-k is always off
    do_sample: bool = True  # sample (True) or greedy decode (False)
    batch_size: int = 16  # prompts per generate() call
    seed: int = 0  # batch i is sampled after torch.manual_seed(seed + i)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise CurryError(f"generation max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise CurryError(f"generation temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise CurryError(f"generation top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise CurryError(f"generation batch_size must be >= 1, got {self.batch_size}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


def render_prompt(tokenizer, prompt: Prompt | str) -> tuple[str, bool]:
    """The text fed to the model and whether it came from the chat template.

    Chat prompts always go through the chat template; string prompts are wrapped as a
    single user message when the tokenizer has a template, else used raw.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, Prompt) and prompt.messages is not None:
        if not has_template:
            raise CurryError(f"prompt {prompt.id!r} is a chat (messages) but the tokenizer has no chat template; "
                             "use a chat model or give the prompt as a plain string")
        msgs = prompt.messages
    else:
        text = prompt if isinstance(prompt, str) else prompt.text
        if not has_template:
            return text, False
        msgs = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), True


def generate(model, tokenizer, prompts: Sequence[Prompt | str], cfg: GenerationConfig | None = None, *,
             progress: bool = True) -> list[str]:
    """Completions for ``prompts`` (decoded, without the prompt and special tokens, stripped).

    Batches are left-padded by hand (templated text is tokenised without extra special
    tokens — the template already has them). Batch ``i`` runs after
    ``torch.manual_seed(cfg.seed + i)`` inside ``torch.random.fork_rng``, so the same
    seed gives the same outputs and the caller's RNG state is untouched.
    """
    import torch
    from tqdm.auto import tqdm

    cfg = cfg or GenerationConfig()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise CurryError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    encoded = []
    for p in prompts:
        text, templated = render_prompt(tokenizer, p)
        encoded.append(tokenizer(text, add_special_tokens=not templated)["input_ids"])
    gen_kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": pad_id}
    if cfg.greedy:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        gen_kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    starts = range(0, len(encoded), cfg.batch_size)
    try:
        for b, start in enumerate(tqdm(starts, desc="generate", unit="batch", disable=bars_off(progress))):
            batch = encoded[start:start + cfg.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=device)  # (B, T)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                torch.manual_seed(cfg.seed + b)
                out = model.generate(input_ids=input_ids, attention_mask=mask, **gen_kwargs)  # (B, T + new)
            outputs.extend(t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs


def _check_same_length(what: str, a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise CurryError(f"{what}: {len(a)} prompts but {len(b)} outputs; pass one output per prompt")


def export_alpaca_eval(path: str | os.PathLike, prompts: Sequence[Prompt | str], outputs: Sequence[str],
                       generator: str) -> None:
    """Write AlpacaEval's model-outputs file: a JSON list of {instruction, output, generator} (atomic)."""
    _check_same_length("export_alpaca_eval", prompts, outputs)
    rows = [{"instruction": p if isinstance(p, str) else p.text, "output": o, "generator": generator}
            for p, o in zip(prompts, outputs)]
    write_json(path, rows)


def export_mt_bench(path: str | os.PathLike, question_ids: Sequence[Any], outputs: Sequence[str | Sequence[str]],
                    model_id: str) -> None:
    """Write FastChat MT-bench answers as JSONL (atomic).

    One row per question: {question_id, answer_id, model_id, choices: [{index: 0,
    turns: [...]}], tstamp}. An output string is one turn (we generate the first turn
    only); pass a list of strings to write several turns. ``answer_id`` is a stable
    hash of (model_id, question_id, turns).
    """
    _check_same_length("export_mt_bench", question_ids, outputs)
    now = time.time()
    rows = []
    for qid, out in zip(question_ids, outputs):
        turns = [out] if isinstance(out, str) else list(out)
        answer_id = hashlib.sha256(json.dumps([model_id, qid, turns]).encode("utf-8")).hexdigest()[:22]
        rows.append({"question_id": qid, "answer_id": answer_id, "model_id": model_id,
                     "choices": [{"index": 0, "turns": turns}], "tstamp": now})
    write_jsonl(path, rows)
