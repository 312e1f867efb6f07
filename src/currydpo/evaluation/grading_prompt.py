"""The single-answer grading prompt for MT-bench (a 1-10 rating per turn), and how its rating is read.

This is the one file to edit (or copy and pass as ``eval --judge-prompt FILE.py``) to change
what the judge is asked. A replacement defines the same two functions:

- ``grading_messages(turns, answers, references) -> list[dict]``: the chat messages sent to
  the judge to grade the assistant's LAST answer, with the conversation so far as context;
- ``parse_rating(text) -> float | None``: the rating in the judge's reply, None when it has
  none (the grader then asks again, and finally abstains).

The task is the single-answer grading of MT-bench (Zheng et al. 2023, "Judging LLM-as-a-Judge
with MT-Bench and Chatbot Arena", arXiv 2306.05685: a 1-10 rating of one answer, the whole
conversation shown for the second turn, a reference answer for math, reasoning and coding).
The wording below is ours, not FastChat's prompt. Ratings from different prompts are not
comparable with each other or with published MT-bench scores; the cache key is the full
request, so editing this text never reuses ratings made with the old one.
"""

from __future__ import annotations

import re

SYSTEM = (
    "You grade the replies of an AI assistant. You will read a conversation between a user and the "
    "assistant. Grade only the assistant's final reply; the earlier turns are context it must stay "
    "consistent with. Ask whether that reply is correct, helpful, relevant to what the user asked in the "
    "final turn, detailed where detail helps, and clearly written. Length alone earns nothing. "
    "When reference answers are given, take them as correct: a reply whose facts, result or code "
    "disagree with the reference is a poor reply however well it is written. "
    "Begin with a brief justification. End with your rating on its own line, a number from 1 (useless or "
    "wrong) to 10 (could not be better), written inside double square brackets, like this: Rating: [[5]]"
)


def grading_messages(turns: list[str], answers: list[str], references: list[str] | None) -> list[dict]:
    """Messages asking for a rating of ``answers[-1]``. ``turns[k]`` and ``answers[k]`` are turn k's user
    message and the assistant's reply; ``references`` (one per turn shown, or None) are shown after them."""
    blocks = []
    for k, (user, answer) in enumerate(zip(turns, answers), start=1):
        blocks.append(f"<<user, turn {k}>>\n{user}\n<<end of user, turn {k}>>")
        blocks.append(f"<<assistant, turn {k}>>\n{answer}\n<<end of assistant, turn {k}>>")
    for k, reference in enumerate(references or [], start=1):
        blocks.append(f"<<reference answer, turn {k}>>\n{reference}\n<<end of reference answer, turn {k}>>")
    last = len(answers)
    task = (f"Grade the assistant's reply in turn {last}" + (" against the reference" if references else "")
            + " and end with Rating: [[N]], N from 1 to 10.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(blocks + [task])}]


_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_rating(text: str) -> float | None:
    """The rule: the LAST ``[[N]]`` in the reply, N a number from 1 to 10 (decimals allowed); else None.

    The last one, because judges often quote the scale ("[[1]] to [[10]]") before they rate; a
    number outside 1-10 is no rating (asked again), not clipped.
    """
    found = _RATING.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 1.0 <= value <= 10.0 else None
