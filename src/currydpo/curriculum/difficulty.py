"""Difficulty measures on pairs. Higher = harder, always.

Curry-DPO (Pattnaik et al. 2024, arXiv 2403.07230, Sec. 3.2) calls a pair easy when
its two responses are far apart in quality: (R1, R4) is easier than (R1, R2). Each
measure below writes ``pair.difficulty[name]`` so every computed measure stays
inspectable; the schedule reads the one the config names.

- ``score-gap``: -(s_chosen - s_rejected); falls back to ``rank-gap`` on rank-only data.
- ``rank-gap``: -(rank distance) (OpenAssistant-style ranks).
- ``ref-logratio``: c = log pi_ref(y_l|x) - log pi_ref(y_w|x) from the cached reference
  log-probs (Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference
  Rankings": the DPO loss must fall below -log sigmoid(beta * c) before the pair is
  ranked right, so large c = hard).
- ``reward-margin``: -(r(x, y_w) - r(x, y_l)) under a sequence-classification reward model.
- ``length-gap``: -|len(y_w) - len(y_l)| in characters (a big length difference is an
  easy cue; near-equal lengths are harder).
- ``column:NAME``: a numeric field of the record (``record.meta[NAME]``), as given.
- ``function:MODULE:FN`` or ``function:FILE.py:FN``: a user function ``fn(pair_dict) -> float``
  (the user's own code, imported by `userfn.load_function`).
- ``dynamic``: the current policy's DPO loss on the pair, measured by the trainer
  between stages (self-paced learning).
"""

from __future__ import annotations

import math
from typing import Sequence

from ..data.pairs import Pair
from ..data.records import Record, text_of
from ..errors import CurryError
from ..userfn import load_function

STATIC = ("score-gap", "rank-gap", "length-gap")
NEEDS_MODEL = ("ref-logratio", "reward-margin", "dynamic")
MEASURES = STATIC + NEEDS_MODEL + ("column:NAME", "function:MODULE:FN")


def check_measure(name: str) -> str:
    if name in STATIC or name in NEEDS_MODEL:
        return name
    if name.startswith("column:") and len(name) > len("column:"):
        return name
    if name.startswith("function:") and name.count(":") == 2 and all(name.split(":")[1:]):
        return name
    raise CurryError(f"unknown difficulty measure {name!r}; choose one of: {', '.join(MEASURES)}")


def check_section(curriculum) -> None:
    """The ``curriculum:`` keys of the difficulty measure (``config.CurriculumConfig``, or any object with them)."""
    try:
        check_measure(curriculum.difficulty)
    except CurryError as e:
        raise CurryError(f"config: {e}") from None
    if curriculum.difficulty == "reward-margin" and not curriculum.reward_model:
        raise CurryError("config: difficulty 'reward-margin' needs 'curriculum.reward_model' (a model path)")


def pair_dict(p: Pair, rec: Record) -> dict:
    """What a user difficulty function sees: plain data, no tensors."""
    return {
        "prompt_id": rec.id, "prompt": rec.prompt,
        "chosen": rec.responses[p.chosen].text, "rejected": rec.responses[p.rejected].text,
        "chosen_score": p.chosen_score, "rejected_score": p.rejected_score,
        "score_gap": p.score_gap, "rank_gap": p.rank_gap, "rejected_position": p.rejected_position,
        "meta": rec.meta,
    }


def _finite(name: str, value, rec: Record) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise CurryError(f"{rec.source or '<data>'} row {rec.row} (prompt {rec.id}): difficulty {name!r} "
                         f"gave {value!r}, expected a finite number")
    return v


def check_signature(fn, name: str) -> None:
    """A difficulty function takes one pair dict: say so in one line, not as a TypeError deep in the loop."""
    import inspect

    try:
        inspect.signature(fn).bind({})
    except TypeError:
        raise CurryError(f"difficulty {name!r}: the function must take one argument (a pair dict: prompt, chosen, "
                         f"rejected, scores, ...) and return a float; its signature is "
                         f"{fn.__name__}{inspect.signature(fn)}") from None
    except ValueError:  # a builtin without a signature: let the call decide
        return


def measure_static(name: str, pairs: Sequence[Pair], records: Sequence[Record]) -> None:
    """Compute a measure that needs no model, storing it in ``pair.difficulty[name]``."""
    check_measure(name)
    fn = load_function(name[len("function:"):], f"difficulty {name!r}") if name.startswith("function:") else None
    if fn is not None:
        check_signature(fn, name)
    for p in pairs:
        rec = records[p.record]
        if name == "score-gap":
            v = -p.score_gap if p.score_gap is not None else -float(p.rank_gap)
        elif name == "rank-gap":
            v = -float(p.rank_gap)
        elif name == "length-gap":
            v = -abs(len(text_of(rec.responses[p.chosen].text)) - len(text_of(rec.responses[p.rejected].text)))
        elif name.startswith("column:"):
            col = name.split(":", 1)[1]
            if col not in rec.meta:
                raise CurryError(f"{rec.source or '<data>'} row {rec.row} field '{col}': missing "
                                 f"(difficulty {name!r} reads this column of every row)")
            v = rec.meta[col]
        else:
            v = fn(pair_dict(p, rec))
        p.difficulty[name] = _finite(name, v, rec)


def measure_from_response_values(name: str, pairs: Sequence[Pair], values: dict[tuple[int, int], float],
                                 sign: float) -> None:
    """Measures defined by a per-response number v: difficulty = sign * (v_chosen - v_rejected).

    ``ref-logratio`` uses v = reference log-prob with sign -1 (c = ref_l - ref_w);
    ``reward-margin`` uses v = reward with sign -1 (a big margin is easy).
    """
    for p in pairs:
        p.difficulty[name] = sign * (values[(p.record, p.chosen)] - values[(p.record, p.rejected)])


def measure_dynamic(pairs: Sequence[Pair], losses: Sequence[float]) -> None:
    """Self-paced difficulty: the current policy's per-pair loss (higher = harder)."""
    for p, v in zip(pairs, losses):
        p.difficulty["dynamic"] = float(v)
