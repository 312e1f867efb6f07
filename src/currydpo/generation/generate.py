"""Sampling answers from a policy for evaluation prompts, and exporting them.

`load_prompts` reads evaluation prompt files (JSONL or a JSON list): plain
``prompt`` strings, chat ``messages``, FastChat question files (MT-bench, Vicuna-80:
``question_id``, ``category``, ``turns``), ``instruction`` / ``text`` rows (AlpacaEval)
and WizardLM's test set (``idx``, ``Instruction``). `generate` samples completions in
left-padded batches, reproducibly for a seed; `answer_turns` answers every turn of multi-turn questions, each
next user turn after the model's own previous answers (MT-bench). The exports write the
formats AlpacaEval and FastChat's MT-bench judge read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..data.records import check_messages
from ..errors import BadRow, CurryError
from ..io import write_json, write_jsonl
from ..progress import progress_bar

# "Instruction" + "idx": WizardLM's test set (nlpxucan/WizardLM, WizardLM/data/WizardLM_testset.jsonl, 218 rows)
PROMPT_KEYS = ("messages", "prompt", "turns", "instruction", "Instruction", "text")


@dataclass
class Prompt:
    """One evaluation prompt. ``messages`` is set for chat prompts (then ``text`` is the
    last user turn, which is what judges and exports show); ``id`` is the file's
    ``question_id``/``id`` or the 0-based row index. Question files set ``turns`` (every
    user turn; ``text`` is the first) and ``category``."""

    id: Any
    text: str
    messages: list[dict[str, str]] | None = None
    turns: list[str] | None = None
    category: str | None = None


def _row_to_prompt(row: Any, source: str, line: int, index: int) -> Prompt:
    if not isinstance(row, dict):
        raise BadRow(source, line, None, "bad row", f"expected a JSON object, got {type(row).__name__}")
    pid = row.get("question_id", row.get("id", row.get("idx", index)))
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
        for i, turn in enumerate(value):
            _check_text(turn, source, line, f"turns[{i}]")
        category = row.get("category")
        return Prompt(pid, value[0], turns=list(value), category=None if category is None else str(category))
    _check_text(value, source, line, key)
    return Prompt(pid, value)


def _check_text(value: Any, source: str, line: int, key: str) -> None:
    if not isinstance(value, str):
        raise BadRow(source, line, key, "bad type", f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(source, line, key, "empty text")


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


@dataclass(frozen=True)
class Sample:
    """One sampled answer: its text and the exact token ids it was sampled as.

    ``prompt_ids``: the prompt as fed to the model (without the batch's padding); ``answer_ids``: the
    generated ids through the first EOS when one was sampled (``eos`` True), else all ``max_new_tokens``
    of them (cut: no EOS appended). Padding after an EOS is not part of the answer. ``text`` is the
    answer decoded without special tokens, stripped: what `generate` returns."""

    text: str
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    eos: bool


def eos_ids(model, tokenizer) -> set[int]:
    """The ids that end an answer: the model's ``generation_config.eos_token_id`` (an int or a list, as
    ``generate`` stops on them), else the tokenizer's EOS."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def answer_ids(generated: Sequence[int], stop: set[int]) -> tuple[tuple[int, ...], bool]:
    """The sampled answer in one row of ``generate``'s output: through the first EOS (and whether there was
    one); what follows an EOS is padding."""
    ids = [int(t) for t in generated]
    end = next((j for j, t in enumerate(ids) if t in stop), None)
    return (tuple(ids), False) if end is None else (tuple(ids[:end + 1]), True)


def generate(model, tokenizer, prompts: Sequence[Prompt | str], cfg: GenerationConfig | None = None, *,
             progress: bool = True) -> list[str]:
    """Completions for ``prompts`` (decoded, without the prompt and special tokens, stripped):
    the texts of `generate_samples`."""
    return [s.text for s in generate_samples(model, tokenizer, prompts, cfg, progress=progress)]


def generate_samples(model, tokenizer, prompts: Sequence[Prompt | str], cfg: GenerationConfig | None = None, *,
                     progress: bool = True) -> list[Sample]:
    """One `Sample` per prompt: the answer's text and the token ids it was sampled as.

    Batches are left-padded by hand (templated text is tokenised without extra special
    tokens — the template already has them). Batch ``i`` runs after
    ``torch.manual_seed(cfg.seed + i)`` inside ``torch.random.fork_rng``, so the same
    seed gives the same outputs and the caller's RNG state is untouched.
    """
    import torch

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
    stop = eos_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    samples: list[Sample] = []
    starts = range(0, len(encoded), cfg.batch_size)
    try:
        for b, start in enumerate(progress_bar(starts, desc="generate", unit="batch", enabled=progress)):
            batch = encoded[start:start + cfg.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=device)  # (B, T)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                torch.manual_seed(cfg.seed + b)
                out = model.generate(input_ids=input_ids, attention_mask=mask, **gen_kwargs)  # (B, T + new)
            for ids, row in zip(batch, out[:, width:].tolist()):
                answer, eos = answer_ids(row, stop)
                text = tokenizer.decode(answer, skip_special_tokens=True).strip()
                samples.append(Sample(text, tuple(ids), answer, eos))
    finally:
        model.train(was_training)
    return samples


# MT-bench's sampling temperature per question category (FastChat llm_judge/common.py temperature_config,
# Zheng et al. 2023, arXiv 2306.05685); categories not listed get DEFAULT_TEMPERATURE there.
MT_BENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                         "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
MT_BENCH_DEFAULT_TEMPERATURE = 0.7


def user_turns(prompt: Prompt | str) -> list[str]:
    """A prompt's user turns: a question file's ``turns``, else its one (last) user message."""
    if isinstance(prompt, Prompt):
        return prompt.turns or [prompt.text]
    return [prompt]


def conversation(prompt: Prompt | str, answers: Sequence[str], k: int) -> Prompt | str:
    """What the model sees for turn ``k``: user turns 0..k with its own ``answers`` to turns < k between them."""
    if k == 0:
        return prompt  # the first turn exactly as a single-turn prompt
    turns = user_turns(prompt)
    msgs = []
    for user, answer in zip(turns[:k], answers[:k]):
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    msgs.append({"role": "user", "content": turns[k]})
    return Prompt(prompt.id if isinstance(prompt, Prompt) else k, turns[k], msgs)


def answer_turns(engine, prompts: Sequence[Prompt | str], cfg: GenerationConfig, *,
                 temperatures: dict[str, float] | None = None, default_temperature: float | None = None,
                 progress: bool = True) -> list[list[str]]:
    """Every turn of every prompt answered, as MT-bench asks: turn k follows the model's own answers to turns < k.

    All prompts at turn k that share a temperature are one ``engine.generate`` call (batched across
    questions). ``temperatures`` maps a prompt's ``category`` to its temperature (0 = greedy), e.g.
    `MT_BENCH_TEMPERATURES`; other prompts get ``default_temperature`` (default ``cfg.temperature``).
    Without ``temperatures`` every turn samples with ``cfg`` unchanged. Turn k, group g is seeded
    ``cfg.seed + 100_000 * k + 10_000 * g``: distinct streams, the same answers for the same seed.
    """
    default = cfg.temperature if default_temperature is None else default_temperature

    def cfg_for(p) -> GenerationConfig:
        if temperatures is None:
            return cfg
        cat = p.category if isinstance(p, Prompt) else None
        t = temperatures.get(cat, default) if cat is not None else default
        return replace(cfg, temperature=t, do_sample=t > 0)

    answers: list[list[str]] = [[] for _ in prompts]
    for k in range(max((len(user_turns(p)) for p in prompts), default=0)):
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            if len(user_turns(p)) > k:
                c = cfg_for(p)
                groups.setdefault((c.temperature, c.do_sample), []).append(i)
        for g, ((temperature, do_sample), idx) in enumerate(sorted(groups.items())):
            gcfg = replace(cfg, temperature=temperature, do_sample=do_sample, seed=cfg.seed + 100_000 * k + 10_000 * g)
            outs = engine.generate([conversation(prompts[i], answers[i], k) for i in idx], gcfg, progress=progress)
            for i, out in zip(idx, outs, strict=True):
                answers[i].append(out)
    return answers


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
    turns: [...]}], tstamp}. An output string is one turn; a list of strings (from
    `answer_turns`) is every turn. ``answer_id`` is a stable
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
