"""MT-bench: multi-turn questions answered turn by turn, every turn rated 1-10 by an LLM judge.

The paper's headline number (Curry-DPO: MT-bench 7.43 with Zephyr-7B) is MT-bench's
*single-answer grading* (Zheng et al. 2023, arXiv 2306.05685): the 80 two-turn questions
of FastChat's ``question.jsonl`` are answered by `generation.answer_turns` (turn 2 after
the model's own turn-1 answer, per-category temperatures); a judge behind an
OpenAI-compatible endpoint rates each turn from 1 to 10 seeing the conversation so far,
and for math, reasoning and coding the reference answers (FastChat's
``reference_answer/*.jsonl``). The score is the mean over every rated turn; turn 1 and
turn 2 and each category are means over their turns, as FastChat's ``show_result.py``
reports them.

The prompt and the rating rule are in `grading_prompt.py` (swappable). The transport is
`judges.ChatClient`: retries with back-off, ``Retry-After``, an append-only rating cache
``{cache_dir}/mt_bench_ratings.jsonl`` keyed by the full request, so a killed grading run
resumes without asking again. A reply without a rating is asked again and finally counted
as an abstention, never cached and never a number; all abstained is an error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import BadRow, CurryError
from ..generation.generate import Prompt, user_turns
from ..io import save_figure
from .judges import ChatClient, openai_spec, run_concurrently
from .winrate import bootstrap_ci

NEED_REFERENCE = ("math", "reasoning", "coding")  # FastChat llm_judge/common.py NEED_REF_CATS
RATING_RANGE = (1.0, 10.0)


def load_references(path: str | os.PathLike, what: str = "reference answer file") -> dict[Any, list[str]]:
    """FastChat answer rows (``question_id``, ``choices[0].turns``: reference answers, or a model's answers)
    -> {question_id: [answer per turn]}."""
    path = Path(path)
    if not path.is_file():
        raise CurryError(f"{what} {path} not found")
    refs: dict[Any, list[str]] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            turns = row["choices"][0]["turns"]
            qid = row["question_id"]
        except ValueError as e:
            raise BadRow(str(path), line_no, None, "invalid JSON", str(e)) from e
        except (KeyError, IndexError, TypeError):
            raise BadRow(str(path), line_no, None, "not a FastChat answer row",
                         "expected question_id and choices[0].turns") from None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise BadRow(str(path), line_no, "choices[0].turns", "bad turns", "expected a list of strings")
        refs[qid] = turns
    return refs


def default_reference_path(questions: str | os.PathLike) -> Path | None:
    """FastChat keeps ``reference_answer/gpt-4.jsonl`` beside ``question.jsonl``; a flat
    ``reference_answer_gpt-4.jsonl`` there is accepted too. None when neither exists."""
    d = Path(questions).parent
    for p in (d / "reference_answer" / "gpt-4.jsonl", d / "reference_answer_gpt-4.jsonl"):
        if p.is_file():
            return p
    return None


def load_answer_file(path: str | os.PathLike) -> dict[Any, list[str]]:
    """A FastChat model-answer file (our `export_mt_bench` output, or FastChat's) -> {question_id: turns}."""
    return load_references(path, "answer file")


class SingleGrader:
    """Rates each turn of each answer 1-10 through ``openai:URL[#MODEL]`` (see the module docstring).

    ``prompt_file``: a ``.py`` file defining ``grading_messages`` and ``parse_rating`` (default:
    `grading_prompt`).
    """

    def __init__(self, spec: str, *, cache_dir: str | os.PathLike | None = None, prompt_file: str | None = None,
                 concurrency: int = 4, max_attempts: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 timeout_s: float = 120.0, max_tokens: int = 1024, progress: bool = False):
        url, model = openai_spec(spec)
        if concurrency < 1:
            raise CurryError(f"mt-bench grader: concurrency must be >= 1, got {concurrency}")
        self.spec, self.concurrency, self.progress = spec, concurrency, progress
        self.client = ChatClient(url, model, spec=spec, max_attempts=max_attempts, backoff_s=backoff_s,
                                 max_backoff_s=max_backoff_s, timeout_s=timeout_s, max_tokens=max_tokens,
                                 cache_path=None if cache_dir is None else Path(cache_dir) / "mt_bench_ratings.jsonl")
        if prompt_file:
            from ..userfn import load_function

            what = f"--judge-prompt {prompt_file}"
            self.messages = load_function(f"{prompt_file}:grading_messages", what)
            self.parse = load_function(f"{prompt_file}:parse_rating", what)
        else:
            from . import grading_prompt

            self.messages, self.parse = grading_prompt.grading_messages, grading_prompt.parse_rating
        self.stats = self.client.stats

    def _rate(self, messages: list[dict]) -> float | None:
        return self.client.ask(messages, self.parse)

    def grade(self, questions: Sequence[Prompt], answers: Sequence[Sequence[str]],
              references: dict[Any, list[str]] | None = None) -> list[list[float | None]]:
        """Ratings ``[question][turn]`` (None = abstained). Turn k is graded with turns 0..k of the conversation
        and, for `NEED_REFERENCE` categories, the reference answers to turns 0..k."""
        if len(questions) != len(answers):
            raise CurryError(f"mt-bench grading: {len(questions)} questions but {len(answers)} answers")
        references = references or {}
        jobs, where = [], []
        for i, (q, ans) in enumerate(zip(questions, answers)):
            turns = user_turns(q)
            ref = references.get(q.id) if q.category in NEED_REFERENCE else None
            for k in range(min(len(turns), len(ans))):
                jobs.append((self.messages(turns[:k + 1], list(ans[:k + 1]), ref[:k + 1] if ref else None),))
                where.append((i, k))
        rated = run_concurrently(self._rate, jobs, self.concurrency,
                                 f"grade {self.client.identity}" if self.progress else None)
        out: list[list[float | None]] = [[None] * min(len(user_turns(q)), len(a)) for q, a in zip(questions, answers)]
        for (i, k), r in zip(where, rated):
            out[i][k] = r
        return out


def missing_references(questions: Sequence[Prompt], references: dict[Any, list[str]]) -> list[Any]:
    """Ids of questions whose category needs a reference answer that ``references`` lacks."""
    return [q.id for q in questions if q.category in NEED_REFERENCE and len(references.get(q.id) or []) <
            len(user_turns(q))]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarise(questions: Sequence[Prompt], ratings: Sequence[Sequence[float | None]], *, seed: int = 0) -> dict:
    """``score`` (mean of every rated turn), ``turn_1``, ``turn_2``, ... , ``categories`` {name: mean},
    ``n_questions`` (questions with a rating), ``n_ratings``, ``abstained`` (turns the judge gave no rating),
    ``score_ci`` (bootstrap 95% over rated turns; inside 1-10 by construction) and per-question ``ratings``."""
    flat = [(i, q, k, r) for i, (q, rs) in enumerate(zip(questions, ratings)) for k, r in enumerate(rs)]
    rated = [(i, q, k, r) for i, q, k, r in flat if r is not None]
    if not rated:
        raise CurryError(f"the judge gave no readable rating for any of the {len(flat)} turns; check the endpoint "
                         "and its model (its replies must end with [[N]], N from 1 to 10)")
    values = [r for *_, r in rated]
    out: dict[str, Any] = {"score": _mean(values), "score_ci": list(bootstrap_ci(values, seed=seed))}
    for k in range(max(len(rs) for rs in ratings)):
        out[f"turn_{k + 1}"] = _mean([r for _, _, kk, r in rated if kk == k])
    cats = sorted({q.category for q in questions if q.category is not None})
    out["categories"] = {c: _mean([r for _, q, _, r in rated if q.category == c]) for c in cats}
    out.update(n_questions=len({i for i, *_ in rated}), n_ratings=len(rated), abstained=len(flat) - len(rated),
               ratings=[{"question_id": q.id, "category": q.category, "ratings": list(rs)}
                        for q, rs in zip(questions, ratings)])
    return out


def _cell(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def markdown_table(results: dict[str, dict]) -> str:
    """One row per model: score (95% CI), turn 1, turn 2, every category, questions graded and abstentions."""
    cats = sorted({c for r in results.values() for c in r["categories"]})
    head = ["model", "MT-bench score (95% CI)", "turn 1", "turn 2", *cats, "questions", "abstained"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        lo, hi = r["score_ci"]
        row = [name, f"{r['score']:.2f} ({lo:.2f}–{hi:.2f})", _cell(r.get("turn_1")), _cell(r.get("turn_2")),
               *(_cell(r["categories"].get(c)) for c in cats), str(r["n_questions"]), str(r["abstained"])]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Ratings 1–10 by the judge, one per turn (single-answer grading, MT-bench, arXiv 2306.05685); "
              "score = mean over rated turns. Abstained = turns whose judge reply held no rating after retries "
              "(left out of every mean)."]
    return "\n".join(lines) + "\n"


def plot_categories(path: str | os.PathLike, results: dict[str, dict]) -> None:
    """Bar chart of the per-category means, the models side by side in each category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = sorted({c for r in results.values() for c in r["categories"]})
    x = np.arange(len(cats))
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cats) * max(1, len(results))), 3.8))
    for j, (name, r) in enumerate(results.items()):
        vals = [r["categories"].get(c) for c in cats]
        ax.bar(x + (j - (len(results) - 1) / 2) * width, [np.nan if v is None else v for v in vals], width,
               label=f"{name} ({r['score']:.2f})")
    ax.set_xticks(x, cats, rotation=30)
    ax.set_ylim(0, RATING_RANGE[1])
    ax.set_ylabel("mean rating (1–10)")
    ax.set_title("MT-bench by category")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def warn_missing_references(questions: Sequence[Prompt], references: dict[Any, list[str]]) -> None:
    missing = missing_references(questions, references)
    if missing:
        print(f"currydpo: {len(missing)} {'/'.join(NEED_REFERENCE)} question(s) have no reference answer "
              f"(e.g. question {missing[0]}); they are graded without one, so the score is not comparable to "
              "published MT-bench scores. Pass --mt-bench-reference FILE", file=sys.stderr)
