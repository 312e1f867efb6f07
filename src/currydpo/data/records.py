"""The canonical data model: one record per prompt holding N rated responses.

Every loader turns its format into `Record`s; pairs (see `pairs.py`) are index
pairs into a record's responses, so each unique (prompt, response) exists once and
is tokenised once and scored by a reference model once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

from ..errors import BadRow

Message = dict[str, str]  # {"role": "user"|"assistant"|"system", "content": "..."}
Text = Union[str, list[Message]]
VALID_ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Response:
    """One candidate answer. ``text`` is a string or a list of assistant messages.

    ``score``: higher is better (e.g. mean UltraFeedback aspect rating, 1..5).
    ``rank``: 0 is best (OpenAssistant / Nectar style). Either may be missing.
    """

    text: Text
    score: float | None = None
    rank: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    """A prompt (string or chat messages) with its responses, and where it came from."""

    id: str
    prompt: Text
    responses: list[Response]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    row: int | None = None

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)

    def quality(self, i: int) -> float:
        """A number where higher is better: the score if the record has scores, else -rank."""
        r = self.responses[i]
        if self.has_scores:
            return float(r.score)
        return -float(r.rank)

    @property
    def has_scores(self) -> bool:
        return all(r.score is not None for r in self.responses)

    def order(self) -> list[int]:
        """Response indices best first (stable for ties)."""
        return sorted(range(len(self.responses)), key=lambda i: -self.quality(i))

    def positions(self) -> list[int]:
        """1-based rank position of each response, ties sharing the better position."""
        pos = [0] * len(self.responses)
        ordered = self.order()
        for k, i in enumerate(ordered):
            if k > 0 and self.quality(i) == self.quality(ordered[k - 1]):
                pos[i] = pos[ordered[k - 1]]
            else:
                pos[i] = k + 1
        return pos


def text_of(t: Text) -> str:
    """Plain text of a string or a message list (for hashing, lengths, display)."""
    if isinstance(t, str):
        return t
    return "\n".join(m.get("content", "") for m in t)


def as_chat(records: list[Record]) -> list[Record]:
    """Plain-text prompts as one user turn and plain responses as one assistant turn.

    Used when the tokenizer has a chat template, so training sees prompts formatted
    exactly as generation does (an instruct model was fine-tuned on its template).
    """
    out = []
    for r in records:
        prompt = [{"role": "user", "content": r.prompt}] if isinstance(r.prompt, str) else r.prompt
        responses = [Response([{"role": "assistant", "content": x.text}] if isinstance(x.text, str) else x.text,
                              x.score, x.rank, x.meta) for x in r.responses]
        out.append(Record(r.id, prompt, responses, r.meta, r.source, r.row))
    return out


def check_messages(msgs: Any, source: str | None, row: int | None, field_name: str) -> list[Message]:
    """Validate a chat message list; return it normalised to {role, content} dicts."""
    if not isinstance(msgs, list) or not msgs:
        raise BadRow(source, row, field_name, "bad message list", "expected a non-empty list of {role, content}")
    out = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadRow(source, row, f"{field_name}[{k}]", "bad message", "expected {role, content}")
        if m["role"] not in VALID_ROLES:
            raise BadRow(source, row, f"{field_name}[{k}].role", "bad role",
                         f"got {m['role']!r}, expected one of {', '.join(VALID_ROLES)}")
        if not isinstance(m["content"], str):
            raise BadRow(source, row, f"{field_name}[{k}].content", "bad type", "content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def check_characters(text: str, src, row, field_name: str) -> None:
    """No NUL byte (a binary or corrupted file read as text) and no lone UTF-16 surrogate (a broken escape such as
    ``"\\ud800"``: it cannot be written back as UTF-8 nor tokenised)."""
    if "\x00" in text:
        raise BadRow(src, row, field_name, "NUL byte in text", f"at character {text.index(chr(0))}; a binary or "
                     "corrupted file?")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRow(src, row, field_name, "lone surrogate in text",
                     f"{text[e.start]!r} at character {e.start}; fix the \\u escape") from None


def validate_record(rec: Record) -> Record:
    """Check a record is trainable; raise `BadRow` naming the field otherwise.

    Rules: prompt non-empty; >= 2 responses; no empty text; scores finite numbers;
    at least 2 distinct response texts; every response has a score or every one a rank.
    """
    src, row = rec.source, rec.row
    if isinstance(rec.prompt, str):
        if not rec.prompt.strip():
            raise BadRow(src, row, "prompt", "empty text")
    else:
        rec.prompt = check_messages(rec.prompt, src, row, "prompt")
    check_characters(text_of(rec.prompt), src, row, "prompt")
    if len(rec.responses) < 2:
        raise BadRow(src, row, "responses", "fewer than 2 responses", f"got {len(rec.responses)}")
    for i, r in enumerate(rec.responses):
        if isinstance(r.text, list):
            r.text = check_messages(r.text, src, row, f"responses[{i}]")
        elif not isinstance(r.text, str):
            raise BadRow(src, row, f"responses[{i}]", "bad type", f"text must be a string, got {type(r.text).__name__}")
        if not text_of(r.text).strip():
            raise BadRow(src, row, f"responses[{i}]", "empty text")
        check_characters(text_of(r.text), src, row, f"responses[{i}]")
        if r.score is not None:
            if isinstance(r.score, bool) or not isinstance(r.score, (int, float)):
                raise BadRow(src, row, f"responses[{i}].score", "bad score", f"got {r.score!r}, expected a number")
            if not math.isfinite(r.score):
                raise BadRow(src, row, f"responses[{i}].score", "non-finite score", f"got {r.score}")
            r.score = float(r.score)
        if r.rank is not None and (isinstance(r.rank, bool) or not isinstance(r.rank, int)):
            raise BadRow(src, row, f"responses[{i}].rank", "bad rank", f"got {r.rank!r}, expected an integer")
    scores = [r.score for r in rec.responses if r.score is not None]
    if scores and not math.isfinite(max(scores) - min(scores)):  # gaps order the curriculum: they must exist
        raise BadRow(src, row, "responses", "scores too large",
                     f"the gap between {max(scores)} and {min(scores)} overflows a float; rescale the scores")
    if not rec.has_scores and not all(r.rank is not None for r in rec.responses):
        raise BadRow(src, row, "responses", "missing score/rank", "every response needs a score, or every one a rank")
    # Each unique (prompt, response) is stored once: drop exact repeats, keep the first.
    seen: set[str] = set()
    unique = []
    for r in rec.responses:
        key = text_of(r.text)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    if len(unique) < 2:
        raise BadRow(src, row, "responses", "fewer than 2 distinct responses")
    if len(unique) < len(rec.responses):
        rec.meta["duplicates_dropped"] = len(rec.responses) - len(unique)
        rec.responses = unique
    return rec
