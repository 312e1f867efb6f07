"""Source formats -> canonical `Record`s (one prompt, N rated responses).

Each converter takes one source row (a dict, as `datasets` or `json` gives it) and
returns the records it holds: one for most formats, several for an OpenAssistant
tree. A converter and its helpers do not know which file or row they read: a bad
field raises a `FieldError` (field, reason, detail), and `convert_row`, where the
row number is known, turns it into the `BadRow` naming file, row and field.
`convert_rows` drives them over a table and validates every record, yielding
either the record or the `BadRow` that explains why the row cannot become one, so
the loader can stop or count-and-skip.

Formats (the keys auto-detection looks for in the first row):

- ``ultrafeedback``: openbmb/UltraFeedback — ``instruction``, ``completions[]`` with
  ``response``, ``overall_score``, ``fine-grained_score``, ``annotations``.
- ``nectar``: berkeley-nest/Nectar — ``prompt``, ``answers[]`` with ``answer``,
  ``rank`` (1 = best), ``model``.
- ``oasst``: OpenAssistant, either the tree export (``prompt`` message with nested
  ``replies``) or the flat HF oasst1 table (``message_id``, ``parent_id``, ``role``,
  ``text``, ``rank``; 0 = best).
- ``pairwise``: TRL preference data — ``prompt``/``chosen``/``rejected`` as strings or
  message lists, or only ``chosen``/``rejected`` sharing an implicit prompt prefix
  (Anthropic HH); ``score_chosen``/``score_rejected`` (ultrafeedback_binarized) and the like kept as scores.
- ``ranked``: ours — ``prompt`` (string or messages), ``responses: [{text, score}]``
  or ``[{text, rank}]``, or a plain list of answers best first (LLaMA-Factory's list-DPO proposal),
  optional ``id``.
- ``nemo-rl``: NeMo-RL's preference layout — ``context``, ``completions: [{rank, completion}]`` (0 = best).
- ``curri-dpo``: the Curry-DPO authors' released pairs (ServiceNow-AI/Curriculum_DPO_preferences)
  — ``easy``, ``medium``, ``hard``, each ``{conversation: [turns..., {role: assistant,
  chosen_content, rejected_content}]}`` (see `curri_dpo`).

Arrow fills keys a row lacks with None, so None is treated as "field absent".
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Callable, Iterator, Sequence

from ..errors import BadRow, CurryError, check_choice, where
from .records import Record, Response, check_messages, validate_record

SCORES = ("mean-aspects", "overall")
ON_BAD_ROW = ("error", "skip")  # stop at the first bad row, or count it by reason and go on
# UltraFeedback's four GPT-4 aspects, each rated 1..5 (the paper's 1..5 scale is their mean).
ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
HH_ASSISTANT = "\n\nAssistant:"


# ----------------------------------------------------------------------------- helpers

class FieldError(Exception):
    """A bad field, raised where the row is not known; the loop over rows (`convert_row`, `oasst_flat`) turns it
    into the `BadRow` that names the file, the row and this field."""

    def __init__(self, field: str | None, reason: str, detail: str = ""):
        super().__init__(field, reason, detail)
        self.field, self.reason, self.detail = field, reason, detail

    def at(self, source: str | None, row: int) -> BadRow:
        return BadRow(source, row, self.field, self.reason, self.detail)


def _get(row: dict, key: str, field: str | None = None) -> Any:
    """row[key], or a FieldError that names the field and suggests a near-miss spelling."""
    value = row.get(key) if isinstance(row, dict) else None
    if value is None:
        present = [k for k, v in row.items() if v is not None] if isinstance(row, dict) else []
        close = difflib.get_close_matches(key, [k for k in present if k != key], n=1, cutoff=0.75)
        detail = f"found {close[0]!r}, did you mean {key!r}?" if close else f"keys present: {', '.join(present)}"
        raise FieldError(field or key, "missing field", detail)
    return value


def _expect(value: Any, types: type | tuple, field: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise FieldError(field, "bad type", f"expected {names}, got {type(value).__name__} {value!r:.40}")
    return value


def _text(value: Any, field: str) -> Any:
    """A string or a message list (validated later by `validate_record`)."""
    return _expect(value, (str, list), field)


def _number(value: Any, field: str, strings_ok: bool = False) -> float:
    """A finite-or-not float; numeric strings only where the format writes them ("4")."""
    if strings_ok and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise FieldError(field, "bad score", f"got {value!r}, expected a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, "bad score", f"got {value!r:.40}, expected a number")
    return float(value)


def _rank(value: Any, field: str) -> int:
    """An integer rank; Arrow may hand back 2.0 for 2."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, "bad rank", f"got {value!r:.40}, expected an integer")
    return value


def _row_id(row: dict, default: str, keys: Sequence[str] = ("prompt_id", "id")) -> str:
    for k in keys:
        if isinstance(row, dict) and row.get(k) is not None:
            return str(row[k])
    return default


def _dict_row(row: Any) -> dict:
    if not isinstance(row, dict):
        raise FieldError(None, "bad type", f"expected a JSON object, got {type(row).__name__}")
    return row


# ----------------------------------------------------------------------------- ultrafeedback

def _uf_score(comp: dict, score: str, field: str) -> float:
    if score == "overall":
        return _number(_get(comp, "overall_score", f"{field}.overall_score"), f"{field}.overall_score",
                       strings_ok=True)
    ratings = []
    annotations = comp.get("annotations") or {}
    _expect(annotations, dict, f"{field}.annotations")
    for aspect, ann in annotations.items():
        if not isinstance(ann, dict) or ann.get("Rating") is None:
            continue
        rating = ann["Rating"]
        if isinstance(rating, str) and rating.strip().upper() == "N/A":
            continue  # the judge declined to rate this aspect
        ratings.append(_number(rating, f"{field}.annotations.{aspect}.Rating", strings_ok=True))
    if ratings:
        return sum(ratings) / len(ratings)
    # No usable aspect ratings: fine-grained_score is the same mean, precomputed by openbmb.
    fg = _get(comp, "fine-grained_score", f"{field}.annotations")
    return _number(fg, f"{field}.fine-grained_score", strings_ok=True)


def ultrafeedback(row: dict, score: str, default_id: str) -> list[Record]:
    row = _dict_row(row)
    prompt = _text(_get(row, "instruction"), "instruction")
    comps = _expect(_get(row, "completions"), list, "completions")
    responses = []
    for i, comp in enumerate(comps):
        field = f"completions[{i}]"
        comp = _expect(comp, dict, field)
        text = _text(_get(comp, "response", f"{field}.response"), f"{field}.response")
        meta = {"model": comp["model"]} if comp.get("model") is not None else {}
        responses.append(Response(text, score=_uf_score(comp, score, field), meta=meta))
    return [Record(_row_id(row, default_id), prompt, responses)]


# ----------------------------------------------------------------------------- nectar

def nectar(row: dict, score: str, default_id: str) -> list[Record]:
    row = _dict_row(row)
    prompt = _text(_get(row, "prompt"), "prompt")
    answers = _expect(_get(row, "answers"), list, "answers")
    responses = []
    for i, ans in enumerate(answers):
        field = f"answers[{i}]"
        ans = _expect(ans, dict, field)
        text = _text(_get(ans, "answer", f"{field}.answer"), f"{field}.answer")
        rank = _rank(_get(ans, "rank", f"{field}.rank"), f"{field}.rank")
        meta = {"model": ans["model"]} if ans.get("model") is not None else {}
        responses.append(Response(text, rank=rank, meta=meta))
    return [Record(_row_id(row, default_id), prompt, responses)]


# ----------------------------------------------------------------------------- oasst

OASST_ROLES = {"prompter": "user", "user": "user", "assistant": "assistant"}


def _oasst_role(msg: dict, field: str) -> str:
    role = _get(msg, "role", f"{field}.role")
    if not isinstance(role, str) or role not in OASST_ROLES:
        raise FieldError(f"{field}.role", "bad role", f"got {role!r}, expected one of {', '.join(OASST_ROLES)}")
    return OASST_ROLES[role]


def _oasst_record(node: dict, replies: list[tuple[dict, str]], history: list[dict], default_id: str) -> Record | None:
    """A record for one prompter message if >= 2 of its assistant replies carry a rank."""
    responses = []
    for reply, field in replies:
        if reply.get("rank") is None or reply.get("role") != "assistant":
            continue  # unranked replies (rank null) say nothing about preference
        text = _expect(_get(reply, "text", f"{field}.text"), str, f"{field}.text")
        responses.append(Response(text, rank=_rank(reply["rank"], f"{field}.rank"),
                                  meta={"message_id": reply.get("message_id")}))
    if len(responses) < 2:
        return None
    return Record(str(node.get("message_id") or default_id), list(history), responses)


def oasst_tree(row: dict, score: str, default_id: str) -> list[Record]:
    """One message tree per row; every prompter turn with >= 2 ranked replies is a record."""
    row = _dict_row(row)
    root = _expect(_get(row, "prompt"), dict, "prompt")
    records: list[Record] = []
    # Depth-first walk with the conversation so far; iterative so deep trees cannot overflow.
    stack: list[tuple[dict, str, list[dict]]] = [(root, "prompt", [])]
    while stack:
        node, field, history = stack.pop()
        role = _oasst_role(node, field)
        text = _expect(_get(node, "text", f"{field}.text"), str, f"{field}.text")
        history = history + [{"role": role, "content": text}]
        replies = _expect(node.get("replies") or [], list, f"{field}.replies")
        replies = [(_expect(r, dict, f"{field}.replies[{k}]"), f"{field}.replies[{k}]") for k, r in enumerate(replies)]
        for r, rf in replies:
            _oasst_role(r, rf)
        if role == "user":
            rec = _oasst_record(node, replies, history, default_id)
            if rec is not None:
                records.append(rec)
        stack.extend((r, rf, history) for r, rf in reversed(replies))
    return records


def oasst_flat(rows: Sequence[dict], source: str | None,
               line_of: Callable[[int], int]) -> Iterator[tuple[int, Record | BadRow]]:
    """HF oasst1 layout: one message per row, linked by ``parent_id``. It loops over the rows itself, so it
    names the row of each error (a message's own fields: its row; the walk up a thread: the prompter's row)."""
    by_id: dict[str, tuple[int, dict]] = {}
    children: dict[str, list[tuple[dict, str]]] = {}
    for i, row in enumerate(rows):
        try:
            row = _dict_row(row)
            mid = str(_get(row, "message_id"))
            _oasst_role(row, "role")
            # Check each message's own fields here so errors name the message's own row.
            _expect(_get(row, "text"), str, "text")
            if row.get("rank") is not None:
                _rank(row["rank"], "rank")
            by_id[mid] = (i, row)
            if row.get("parent_id") is not None:
                children.setdefault(str(row["parent_id"]), []).append((row, f"row {line_of(i)}"))
        except FieldError as e:
            yield i, e.at(source, line_of(i))
    for mid, (i, row) in by_id.items():
        if OASST_ROLES[row["role"]] != "user" or mid not in children:
            continue
        rowno = line_of(i)
        try:
            history, cur, seen = [], row, set()
            while cur is not None:  # walk up to the root; `seen` guards against parent cycles
                cid = str(cur["message_id"])
                if cid in seen:
                    raise FieldError("parent_id", "bad tree", f"cycle through message {cid}")
                seen.add(cid)
                text = _expect(_get(cur, "text", "text"), str, "text")
                history.append({"role": OASST_ROLES[cur["role"]], "content": text})
                parent = cur.get("parent_id")
                cur = by_id[str(parent)][1] if parent is not None and str(parent) in by_id else None
            rec = _oasst_record(row, children[mid], history[::-1], str(rowno))
            if rec is not None:
                rec.source, rec.row = source, rowno
                yield i, validate_record(rec)
        except FieldError as e:
            yield i, e.at(source, rowno)
        except BadRow as e:
            yield i, e


def is_flat_oasst(row: Any) -> bool:
    return isinstance(row, dict) and row.get("message_id") is not None and not isinstance(row.get("prompt"), dict)


# ----------------------------------------------------------------------------- pairwise

def _split_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Anthropic HH: the prompt is the shared prefix up to and including the last "\\n\\nAssistant:"."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, n)
    if cut < 0 or cut + len(HH_ASSISTANT) > n:
        raise FieldError("chosen", "no shared prompt",
                         f"chosen and rejected share no prefix ending in {HH_ASSISTANT!r}; add a 'prompt' field")
    cut += len(HH_ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _split_messages(chosen: list, rejected: list) -> tuple[list, list, list]:
    """Conversational implicit prompt: the shared message prefix, backed off so replies start with the assistant."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and isinstance(chosen[n - 1], dict) and chosen[n - 1].get("role") == "assistant":
        n -= 1
    if n == 0:
        raise FieldError("chosen", "no shared prompt",
                         "chosen and rejected share no leading messages; add a 'prompt' field")
    return chosen[:n], chosen[n:], rejected[n:]


# Score columns of pairwise rows, as preference sets name them (ultrafeedback_binarized: score_chosen).
PAIR_SCORES = (("score_chosen", "score_rejected"), ("chosen_score", "rejected_score"),
               ("chosen_rating", "rejected_rating"), ("chosen_reward", "rejected_reward"))


def _pair_scores(row: dict) -> tuple[float, float] | None:
    """The row's (chosen, rejected) scores when it carries a pair of score columns, else None."""
    for c, r in PAIR_SCORES:
        if row.get(c) is not None and row.get(r) is not None:
            return _number(row[c], c, strings_ok=True), _number(row[r], r, strings_ok=True)
    return None


def pairwise(row: dict, score: str, default_id: str) -> list[Record]:
    """A TRL preference row. The prompt is TRL's (``maybe_extract_prompt``): the ``prompt`` field, except where
    it is a string beside chosen/rejected message lists (ultrafeedback_binarized repeats the user turn in both),
    where the lists' shared message prefix is the prompt. Score columns (`PAIR_SCORES`) are kept as the
    responses' scores; without them chosen gets 1 and rejected 0 (``meta["implicit_scores"]``)."""
    row = _dict_row(row)
    chosen = _text(_get(row, "chosen"), "chosen")
    rejected = _text(_get(row, "rejected"), "rejected")
    both_lists = isinstance(chosen, list) and isinstance(rejected, list)
    prompt = row.get("prompt")
    if prompt is not None and not (isinstance(prompt, str) and both_lists and _shares_user_turn(chosen, rejected)):
        prompt = _text(prompt, "prompt")
    elif isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen, rejected = _split_text(chosen, rejected)
    elif both_lists:
        prompt, chosen, rejected = _split_messages(chosen, rejected)
    else:
        raise FieldError("rejected", "bad type", "chosen and rejected must both be strings or both lists")
    scores = _pair_scores(row)
    meta = {} if scores else {"implicit_scores": True}
    sc, sr = scores or (1.0, 0.0)
    return [Record(_row_id(row, default_id), prompt, [Response(chosen, score=sc), Response(rejected, score=sr)],
                   meta=meta)]


def _shares_user_turn(chosen: list, rejected: list) -> bool:
    """Whether two message lists open with the same non-assistant message (a prompt TRL would extract)."""
    return (bool(chosen) and bool(rejected) and chosen[0] == rejected[0] and isinstance(chosen[0], dict)
            and chosen[0].get("role") != "assistant")


def regroup_pairwise(records: list[Record]) -> tuple[list[Record], int]:
    """TRL's flattened rows back into one ranked record per prompt, so a prompt's several pairs form the
    curriculum again (issue #26). Rows sharing a prompt are merged when
    - every row carries scores (`PAIR_SCORES`) that agree with its chosen > rejected and give each response one
      score: the record keeps those scores (best-vs-rest rows A>B, A>C, A>D included, which alone are only a
      partial order); else
    - their relations chosen > rejected determine one total order of the distinct responses (a unique
      topological order): that order is the ranking (rank 0 = best; a repeated pair counts once).
    A group with neither keeps its rows as they are.
    Returns (records, number of prompts whose rows were kept apart)."""
    groups: dict[str, list[Record]] = {}
    for rec in records:
        groups.setdefault(json.dumps(rec.prompt, sort_keys=True), []).append(rec)
    out, kept_apart = [], 0
    for rows in groups.values():
        distinct = {json.dumps([r.responses[0].text, r.responses[1].text], sort_keys=True) for r in rows}
        if len(distinct) == 1:  # one pair (perhaps repeated): nothing to regroup; repeats stay the user's choice
            out.extend(rows)
            continue
        responses = _scored_responses(rows)
        if responses is None:
            order = _total_order(rows)
            responses = None if order is None else [Response(text, rank=k) for k, text in enumerate(order)]
        if responses is None:
            kept_apart += 1
            out.extend(rows)
            continue
        first = rows[0]
        out.append(Record(first.id, first.prompt, responses, meta={"rows": [r.row for r in rows]},
                          source=first.source, row=first.row))
    return out, kept_apart


def _scored_responses(rows: list[Record]) -> list[Response] | None:
    """The distinct responses with their scores, when every row has scores of its own that agree with its
    preference and give each response a single score; else None."""
    if any(r.meta.get("implicit_scores") for r in rows):
        return None
    scores: dict[str, tuple] = {}
    for r in rows:
        (w, lo) = r.responses
        if w.score < lo.score:
            return None
        for x in (w, lo):
            key = json.dumps(x.text, sort_keys=True)
            if scores.setdefault(key, (x.text, x.score))[1] != x.score:
                return None
    return [Response(text, score=s) for text, s in scores.values()]


def _total_order(rows: list[Record]):
    """The response texts best first when the pairs (chosen = responses[0] > rejected = responses[1])
    order them totally, else None."""
    key = lambda t: json.dumps(t, sort_keys=True)  # noqa: E731
    text = {}
    beats: dict[str, set[str]] = {}
    for r in rows:
        w, loser = key(r.responses[0].text), key(r.responses[1].text)
        text.setdefault(w, r.responses[0].text)
        text.setdefault(loser, r.responses[1].text)
        beats.setdefault(w, set()).add(loser)
    indegree = {t: 0 for t in text}
    for w in beats:
        for loser in beats[w]:
            indegree[loser] += 1
    order = []
    while indegree:
        top = [t for t, d in indegree.items() if d == 0]
        if len(top) != 1:  # none: a cycle; several: two responses never compared, even transitively
            return None
        order.append(top[0])
        del indegree[top[0]]
        for loser in beats.get(top[0], ()):
            indegree[loser] -= 1
    return [text[t] for t in order]


# ----------------------------------------------------------------------------- ranked (ours)

def ranked(row: dict, score: str, default_id: str) -> list[Record]:
    row = _dict_row(row)
    prompt = _text(_get(row, "prompt"), "prompt")
    items = _expect(_get(row, "responses"), list, "responses")
    responses = []
    for i, item in enumerate(items):
        field = f"responses[{i}]"
        if isinstance(item, (str, list)):  # a list of answers best first (LLaMA-Factory's list-DPO proposal)
            responses.append(Response(_text(item, field), rank=i))
            continue
        item = _expect(item, dict, field)
        text = _text(_get(item, "text", f"{field}.text"), f"{field}.text")
        s = item.get("score")
        r = item.get("rank")
        if s is None and r is None:
            raise FieldError(f"{field}.score", "missing field", "each response needs 'score' or 'rank'")
        # Numeric strings ("4") are scores: Arrow's JSON reader already turns them into numbers.
        responses.append(Response(text, score=None if s is None else _number(s, f"{field}.score", strings_ok=True),
                                  rank=None if r is None else _rank(r, f"{field}.rank")))
    return [Record(_row_id(row, default_id), prompt, responses)]


# ----------------------------------------------------------------------------- nemo-rl

def nemo_rl(row: dict, score: str, default_id: str) -> list[Record]:
    """NeMo-RL's preference layout: ``context`` (a string or messages) and ``completions[{rank, completion}]``,
    rank 0 the best; a completion is a string or a list of assistant messages."""
    row = _dict_row(row)
    prompt = _text(_get(row, "context"), "context")
    items = _expect(_get(row, "completions"), list, "completions")
    responses = []
    for i, item in enumerate(items):
        field = f"completions[{i}]"
        item = _expect(item, dict, field)
        text = _text(_get(item, "completion", f"{field}.completion"), f"{field}.completion")
        responses.append(Response(text, rank=_rank(_get(item, "rank", f"{field}.rank"), f"{field}.rank")))
    return [Record(_row_id(row, default_id), prompt, responses)]


# ----------------------------------------------------------------------------- curri-dpo (the authors' pairs)

LEVELS = ("easy", "medium", "hard")
# The released order as scores: chosen 4, hard's rejected 3, medium's 2, easy's 1 — so the
# ranks are R1 = chosen, R2 = hard, R3 = medium, R4 = easy and the score gap is the level
# (easy = gap 3). They encode the authors' labels; they are not ratings.
LEVEL_SCORE = {"easy": 1.0, "medium": 2.0, "hard": 3.0}
CHOSEN_SCORE = 4.0


def _curri_level(row: dict, level: str) -> tuple[list[dict], str, str]:
    """(prompt turns, chosen, rejected) of one level: every turn before the last assistant turn is the prompt."""
    entry = _expect(_get(row, level), dict, level)
    turns = _expect(_get(entry, "conversation", f"{level}.conversation"), list, f"{level}.conversation")
    roles = [t.get("role") if isinstance(t, dict) else None for t in turns]
    if "assistant" not in roles:
        raise FieldError(f"{level}.conversation", "no assistant turn",
                         "the last assistant turn must hold chosen_content and rejected_content")
    last = len(roles) - 1 - roles[::-1].index("assistant")
    field = f"{level}.conversation[{last}]"
    if last != len(turns) - 1:
        raise FieldError(f"{level}.conversation[{last + 1}]", "turn after the answer",
                         "the pair's assistant turn (chosen_content/rejected_content) must be the last turn")
    if last == 0:
        raise FieldError(f"{level}.conversation", "no prompt", "no turns before the assistant turn")
    chosen = _expect(_get(turns[last], "chosen_content", f"{field}.chosen_content"), str, f"{field}.chosen_content")
    rejected = _expect(_get(turns[last], "rejected_content", f"{field}.rejected_content"), str,
                       f"{field}.rejected_content")
    if chosen.strip() == rejected.strip():
        raise FieldError(f"{field}.rejected_content", "chosen equals rejected",
                         f"both are {chosen[:40]!r}; a pair needs two different answers — fix or drop this entry")
    prompt = [{k: t.get(k) for k in ("role", "content")} if isinstance(t, dict) else t for t in turns[:last]]
    try:
        return check_messages(prompt, None, None, f"{level}.conversation"), chosen, rejected
    except BadRow as e:  # records.py names the field; the row is added where the rows are looped over
        raise FieldError(e.field, e.reason, e.detail) from None


def curri_dpo(row: dict, score: str, default_id: str) -> list[Record]:
    """One released entry: one 4-response record when the levels agree, else one record per level.

    When all three levels share the prompt and the chosen answer (and their rejected answers
    differ), the entry is one ranked record — chosen R1, hard's rejected R2, medium's R3, easy's
    R4 — so ``best-vs-rest`` rebuilds exactly the released pairs and ``iterative`` their
    easy -> medium -> hard order. Otherwise each level is a record of its own with one pair;
    its score gap (3 easy, 2 medium, 1 hard) and ``meta["level"]`` (1 easy .. 3 hard) carry
    the level, and the iterative stages split by it (``curriculum.split_by: auto`` -> value).
    """
    row = _dict_row(row)
    rid = _row_id(row, default_id)
    levels = {lv: _curri_level(row, lv) for lv in LEVELS}
    prompts = {json.dumps(p, sort_keys=True) for p, _, _ in levels.values()}
    chosen = {c for _, c, _ in levels.values()}
    rejected = [r for _, _, r in levels.values()]
    if len(prompts) == 1 and len(chosen) == 1 and len(set(rejected)) == len(LEVELS):
        prompt, best, _ = levels["hard"]
        responses = [Response(best, score=CHOSEN_SCORE, meta={"curri_dpo": "chosen"})]
        responses += [Response(levels[lv][2], score=LEVEL_SCORE[lv], meta={"curri_dpo": lv})
                      for lv in ("hard", "medium", "easy")]
        return [Record(rid, prompt, responses)]
    return [Record(f"{rid}:{lv}", prompt, [Response(c, score=CHOSEN_SCORE, meta={"curri_dpo": "chosen"}),
                                            Response(r, score=LEVEL_SCORE[lv], meta={"curri_dpo": lv})],
                   meta={"level": LEVELS.index(lv) + 1})
            for lv, (prompt, c, r) in levels.items()]


# ----------------------------------------------------------------------------- registry + detection

# Each converter takes (row, score, default_id): the id when the row names none is its row number.
CONVERTERS: dict[str, Callable[[Any, str, str], list[Record]]] = {
    "ultrafeedback": ultrafeedback,
    "nectar": nectar,
    "oasst": oasst_tree,
    "pairwise": pairwise,
    "ranked": ranked,
    "curri-dpo": curri_dpo,
    "nemo-rl": nemo_rl,
}
FORMATS = tuple(CONVERTERS)

# Keys that identify each format when all are present (and non-null) in the first row.
SIGNATURES: dict[str, list[tuple[str, ...]]] = {
    "ultrafeedback": [("instruction", "completions")],
    "nectar": [("prompt", "answers")],
    "oasst": [("message_tree_id", "prompt"), ("message_id", "role", "text")],
    "pairwise": [("chosen", "rejected")],
    "ranked": [("prompt", "responses")],
    # any two levels: a row missing the third is detected, then fails naming the missing level
    "curri-dpo": [("easy", "medium"), ("easy", "hard"), ("medium", "hard")],
    "nemo-rl": [("context", "completions")],
}


def check_format(name: str, allow_auto: bool = True) -> str:
    valid = (("auto",) if allow_auto else ()) + FORMATS
    if name not in valid:
        raise CurryError(f"unknown data format {name!r}; choose one of: {', '.join(valid)}")
    return name


def check_score(name: str) -> str:
    if name not in SCORES:
        raise CurryError(f"unknown score {name!r}; choose one of: {', '.join(SCORES)}")
    return name


def check_section(data) -> None:
    """The ``data:`` keys that say how rows are read (``config.DataConfig``, or any object with these fields)."""
    check_choice("data.score", data.score, SCORES)
    check_choice("data.on_bad_row", data.on_bad_row, ON_BAD_ROW)
    check_choice("data.format", data.format, ("auto", *FORMATS))


def detect_format(row: Any, source: str | None = None) -> str:
    """The format whose signature keys the first row has; an error if none or several match."""
    keys = sorted(k for k, v in row.items() if v is not None) if isinstance(row, dict) else []
    if isinstance(row, dict) and isinstance(row.get("prompt"), dict) and "replies" in row["prompt"]:
        return "oasst"  # a tree export without message_tree_id
    hits = [f for f, sigs in SIGNATURES.items() if any(all(k in keys for k in sig) for sig in sigs)]
    if len(hits) == 1:
        return hits[0]
    seen = ", ".join(keys) if keys else f"a {type(row).__name__}, not an object"
    what = f"matches several formats ({', '.join(hits)})" if hits else "matches no known format"
    raise CurryError(f"{source or '<input>'} row 1: cannot detect the data format: first row has keys [{seen}], "
                     f"which {what}; pass --format with one of: {', '.join(FORMATS)}")


_CANONICAL = re.compile(r"^(prompt|responses)(?:\[(\d+)\])?(.*)$")


def source_field(fmt: str, field: str | None, score: str = "mean-aspects") -> str | None:
    """`validate_record` names canonical fields (``prompt``, ``responses[i]``); name them as the source does."""
    m = _CANONICAL.match(field or "")
    if fmt not in ("ultrafeedback", "nectar", "pairwise") or not m:
        return field
    head, index, rest = m.group(1), m.group(2), m.group(3)
    if head == "prompt":
        return ("instruction" if fmt == "ultrafeedback" else "prompt") + (f"[{index}]" if index else "") + rest
    if fmt == "pairwise":
        return ("chosen" if index == "0" else "rejected") + rest
    items, text = ("completions", "response") if fmt == "ultrafeedback" else ("answers", "answer")
    if index is None:
        return items + rest
    if rest in (".score", ".rank"):
        if fmt == "ultrafeedback":
            rest = ".overall_score" if score == "overall" else ".annotations"
        return f"{items}[{index}]{rest}"
    return f"{items}[{index}].{text}{rest}"


def _renamed(bad: BadRow, fmt: str, score: str) -> BadRow:
    field = source_field(fmt, bad.field, score)
    if field != bad.field:
        rest = str(bad)[len(f"{where(bad.source, bad.row, bad.field)}: {bad.reason}"):]
        bad.field = field
        bad.args = (f"{where(bad.source, bad.row, field)}: {bad.reason}{rest}",)
    return bad


def convert_row(row: Any, fmt: str, *, source: str | None, rowno: int, score: str = "mean-aspects") -> list[Record]:
    """The records one source row holds (not yet validated); a bad field raises the `BadRow` naming
    ``source``, ``rowno`` and the field."""
    try:
        records = CONVERTERS[fmt](row, score, str(rowno))
    except FieldError as e:
        raise e.at(source, rowno) from None
    for rec in records:
        rec.source, rec.row = source, rowno
    return records


def convert_rows(rows: Sequence[Any], fmt: str, *, source: str | None, score: str = "mean-aspects",
                 line_of: Callable[[int], int] = lambda i: i + 1) -> Iterator[tuple[int, Record | BadRow]]:
    """Yield ``(row index, validated Record or BadRow)`` for every record the rows hold."""
    check_format(fmt, allow_auto=False)
    check_score(score)
    if fmt == "oasst" and rows and is_flat_oasst(rows[0]):
        yield from oasst_flat(rows, source, line_of)
        return
    for i, row in enumerate(rows):
        try:
            records = convert_row(row, fmt, source=source, rowno=line_of(i), score=score)
        except BadRow as e:
            yield i, e
            continue
        for rec in records:
            if isinstance(row, dict):  # numeric columns stay available (difficulty column:NAME)
                rec.meta.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in rec.meta})
            try:
                yield i, validate_record(rec)
            except BadRow as e:
                yield i, _renamed(e, fmt, score)
