"""Online stages, the judging half: ranking a prompt's sampled answers (issue #16)."""

from currydpo.evaluation import online as judging
from currydpo.generation.generate import Prompt


class LongerWins:
    """A pairwise judge (no ``score``): the longer answer wins, equal length ties."""

    spec = "pairwise"

    def __init__(self):
        self.asked = []

    def compare(self, prompts, a, b):
        self.asked += list(zip(a, b))
        return [1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5 for x, y in zip(a, b)]


def test_pairwise_judge_ranks_by_share_of_wins():
    judge = LongerWins()
    chunk = {"prompts": ["p", "q"], "answers": [["bb", "a", "ccc", "bb", ""], ["xx", "yy"]]}
    got = judging.judge_chunk(judge, chunk)
    # distinct non-empty answers: ["bb", "a", "ccc"] -> wins 1, 0, 2 of 2 comparisons; ["xx", "yy"] tie
    assert got["scores"] == [[0.5, 0.0, 1.0], [0.5, 0.5]]
    assert len(judge.asked) == 3 + 1  # every pair once (the judge itself asks both orders)
    records = judging.ranked_records(1, [[Prompt(0, "p"), Prompt(1, "q")]], [chunk], [got])
    assert [r.id for r in records] == ["online-2-0", "online-2-1"]
    assert [x.text for x in records[0].responses] == ["bb", "a", "ccc"] and records[0].meta == {"online_stage": 2}


class AbstainsOnA(LongerWins):
    """Abstains (None) on every comparison that involves the answer "a"."""

    def compare(self, prompts, a, b):
        return [None if "a" in (x, y) else o for x, y, o in zip(a, b, super().compare(prompts, a, b))]


def test_pairwise_abstentions_count_for_neither_answer():
    chunk = {"prompts": ["p", "q"], "answers": [["bb", "a", "ccc"], ["a", "dd"]]}
    got = judging.judge_chunk(AbstainsOnA(), chunk)
    # "bb" vs "ccc" is the only judged comparison: bb 0 of 1, ccc 1 of 1; "a" was never judged (None)
    assert got["scores"] == [[0.0, None, 1.0], [None, None]]
    records = judging.ranked_records(0, [[Prompt(0, "p"), Prompt(1, "q")]], [chunk], [got])
    assert len(records) == 1 and [(x.text, x.score) for x in records[0].responses] == [("bb", 0.0), ("ccc", 1.0)]
