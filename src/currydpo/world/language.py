"""A small synthetic instruction language with a known, graded gold reward.

Four task families, each with a checkable answer:

- ``list``:     "list three fruits."                     -> "here are three fruits: plum, pear and fig."
- ``describe``: "describe the red fox in a happy tone."  -> "the red fox is warm and bright. it looks lovely."
- ``review``:   "write a negative review of the lamp."   -> "this lamp is dull and weak. i do not like it. ..."
- ``math``:     "what is three plus four?"               -> "three plus four is seven."

Every response sentence comes from a small grammar (`SENTENCE_PATTERNS`), so
well-formedness is checkable. `gold_components` grades four dimensions in [0, 1]:

- ``topic``:   does the answer address the prompt's subject (category, animal+colour, item, operands)?
- ``correct``: is the content right (right items and count, tone words matching, right sum)?
- ``form``:    share of sentences that parse under the grammar, times the share of distinct
               sentences (repetition), halved when the answer does not end with a full stop;
- ``length``:  1 inside the task's word-count window, falling linearly below and above it.

`gold_reward` = content x style with content = (topic + 2 correct) / 3 (0 when off
topic) and style = sqrt(form x length): empty, off-topic and repetitive answers score
low, and growing an answer past its window (reward hacking by length) lowers it.
`sample_response(prompt, rng, quality)` writes SFT answers whose flaws (wrong content,
rambling, repetition, truncation, off-topic, too short) become likelier as quality
falls, so a model fitted to them samples good and bad answers alike.
Everything is pure Python and seeded through the ``random.Random`` passed in.
"""

from __future__ import annotations

import math
import random
import re

# --- vocabulary -------------------------------------------------------------------

CATEGORIES = {
    "fruits": ["apple", "pear", "plum", "grape", "lemon", "mango", "peach", "fig", "lime", "melon"],
    "animals": ["fox", "cat", "dog", "owl", "bear", "wolf", "deer", "frog", "duck", "goat"],
    "colors": ["red", "blue", "green", "yellow", "black", "white", "pink", "gray"],
    "tools": ["hammer", "saw", "drill", "rope", "knife", "spade", "brush", "ladder", "wrench"],
    "drinks": ["tea", "milk", "juice", "water", "coffee", "soda", "cocoa"],
}
COLORS = CATEGORIES["colors"]
ANIMALS = CATEGORIES["animals"]
ITEMS = ["lamp", "chair", "book", "phone", "bike", "coat", "cup", "clock", "bag", "shoe", "hat", "pen",
         "desk", "kettle", "radio", "sofa"]
POSITIVE = ["good", "great", "lovely", "bright", "warm", "kind", "calm", "nice", "fine", "sweet"]
NEGATIVE = ["bad", "poor", "dull", "cold", "grim", "weak", "ugly", "rough", "slow", "sour"]
TONES = {"happy": "positive", "sad": "negative", "positive": "positive", "negative": "negative"}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
COUNTS = ["two", "three", "four"]
# Statements whose sentiment counts like a tone word.
LIKE = {"i like it a lot": "positive", "i do not like it": "negative",
        "i would buy it again": "positive", "i would not buy it again": "negative"}
FILLERS = ["i hope this helps.", "that is all i can say.", "let me say it again.", "it is what it is.",
           "thank you for asking.", "i think so."]

# --- prompts ----------------------------------------------------------------------

PROMPT_FORMS = {
    "list": ["list {count} {cat}.", "name {count} {cat}."],
    "describe": ["describe the {color} {animal} in a {tone} tone.", "write about the {color} {animal}, {tone} tone.",
                 "tell me about the {color} {animal} in a {tone} way."],
    "review": ["write a {sent} review of the {item}.", "give a {sent} review of the {item}."],
    "math": ["what is {a} plus {b}?", "add {a} and {b}."],
}
TASKS = ("list", "describe", "review", "math")
# Word-count windows (inclusive) where a response gets full length credit.
LENGTH_WINDOW = {"describe": (6, 16), "review": (8, 20), "math": (2, 9)}

_PROMPT_RES = {
    "list": [re.compile(r"^(?:list|name) (two|three|four) (\w+)\.$")],
    "describe": [re.compile(r"^describe the (\w+) (\w+) in a (\w+) tone\.$"),
                 re.compile(r"^write about the (\w+) (\w+), (\w+) tone\.$"),
                 re.compile(r"^tell me about the (\w+) (\w+) in a (\w+) way\.$")],
    "review": [re.compile(r"^(?:write|give) a (\w+) review of the (\w+)\.$")],
    "math": [re.compile(r"^what is (\w+) plus (\w+)\?$"), re.compile(r"^add (\w+) and (\w+)\.$")],
}


def sample_prompt(rng: random.Random) -> str:
    """One prompt, task family uniform, slots uniform."""
    task = rng.choice(TASKS)
    form = rng.choice(PROMPT_FORMS[task])
    return form.format(count=rng.choice(COUNTS), cat=rng.choice(list(CATEGORIES)), color=rng.choice(COLORS),
                       animal=rng.choice(ANIMALS), tone=rng.choice(list(TONES)),
                       sent=rng.choice(["positive", "negative"]), item=rng.choice(ITEMS),
                       a=rng.choice(NUMBERS[:10]), b=rng.choice(NUMBERS[:10]))


def sample_prompts(n: int, rng: random.Random, exclude: set[str] = frozenset()) -> list[str]:
    """``n`` distinct prompts not in ``exclude`` (rejection sampling over `sample_prompt`)."""
    out: list[str] = []
    seen = set(exclude)
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * (n + 10):
            raise ValueError(f"could not draw {n} distinct prompts outside {len(exclude)} excluded ones; "
                             f"ask for fewer (the language has about {prompt_space_size()} prompts)")
        p = sample_prompt(rng)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def prompt_space_size() -> int:
    n = len(PROMPT_FORMS["list"]) * len(COUNTS) * len(CATEGORIES)
    n += len(PROMPT_FORMS["describe"]) * len(COLORS) * len(ANIMALS) * len(TONES)
    n += len(PROMPT_FORMS["review"]) * 2 * len(ITEMS)
    return n + len(PROMPT_FORMS["math"]) * 100


def parse_prompt(prompt: str) -> tuple[str, dict]:
    """(task, slots) of a prompt of this language; ("unknown", {}) otherwise."""
    p = " ".join(prompt.strip().lower().split())
    for task, res in _PROMPT_RES.items():
        for rx in res:
            m = rx.match(p)
            if not m:
                continue
            g = m.groups()
            if task == "list":
                return task, {"count": NUMBERS.index(g[0]), "cat": g[1]}
            if task == "describe":
                return task, {"color": g[0], "animal": g[1], "tone": TONES.get(g[2], g[2])}
            if task == "review":
                return task, {"tone": g[0], "item": g[1]}
            if g[0] in NUMBERS and g[1] in NUMBERS:
                return task, {"a": NUMBERS.index(g[0]), "b": NUMBERS.index(g[1])}
    return "unknown", {}


# --- the response grammar -----------------------------------------------------------

def _alt(words) -> str:
    return "(?:" + "|".join(sorted(words, key=len, reverse=True)) + ")"


_ANY_ITEM = _alt({w for ws in CATEGORIES.values() for w in ws})
_ADJ = _alt(POSITIVE + NEGATIVE)
_NUM = _alt(NUMBERS)
_NOUN = _alt(ANIMALS + ITEMS)
SENTENCE_PATTERNS = [re.compile("^" + p + "$") for p in [
    rf"here are {_alt(COUNTS)} {_alt(CATEGORIES)}: {_ANY_ITEM}(?:(?:, {_ANY_ITEM})* and {_ANY_ITEM})?",
    rf"{_ANY_ITEM}(?:, {_ANY_ITEM})* and {_ANY_ITEM}",
    rf"the {_alt(COLORS)} {_alt(ANIMALS)} is {_ADJ} and {_ADJ}",
    rf"this {_NOUN} is {_ADJ} and {_ADJ}",
    rf"it looks {_ADJ}",
    _alt(LIKE),
    rf"{_NUM} plus {_NUM} is {_NUM}",
    rf"the answer is {_NUM}",
] + [re.escape(f[:-1]) for f in FILLERS]]

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")


def _sentences(response: str) -> tuple[list[str], bool]:
    """Normalised sentences without their final stop, and whether the text ends with one."""
    text = " ".join(response.strip().lower().split())
    if not text:
        return [], False
    ends = text[-1] in ".!?"
    parts = [s.strip() for s in _SENT_SPLIT.split(text) if s.strip()]
    return [s[:-1].strip() if s[-1] in ".!?" else s for s in parts], ends


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def is_grammatical(sentence: str) -> bool:
    """Does one sentence (no final stop) parse under the response grammar?"""
    return any(p.match(sentence) for p in SENTENCE_PATTERNS)


# --- gold reward --------------------------------------------------------------------

def _tone_share(sentences: list[str], words: list[str], want: str) -> float:
    """Share of sentiment-bearing words and statements that match ``want``; 0 if there are none."""
    hits = [("positive" if w in POSITIVE else "negative") for w in words if w in POSITIVE or w in NEGATIVE]
    hits += [LIKE[s] for s in sentences if s in LIKE]
    if not hits:
        return 0.0
    return sum(h == want for h in hits) / len(hits)


def _length_score(n: int, lo: int, hi: int) -> float:
    if n < lo:
        return n / lo
    if n > hi:
        return max(0.0, 1.0 - (n - hi) / hi)
    return 1.0


def gold_components(prompt: str, response: str) -> dict[str, float]:
    """The four graded quality dimensions (each in [0, 1]) of ``response`` to ``prompt``."""
    task, slots = parse_prompt(prompt)
    sentences, ends = _sentences(response)
    words = _words(response)
    if not words or task == "unknown":
        return {"topic": 0.0, "correct": 0.0, "form": 0.0, "length": 0.0}

    # form: parsing sentences x distinct sentences x proper ending
    valid = sum(is_grammatical(s) for s in sentences) / len(sentences)
    distinct = len(set(sentences)) / len(sentences)
    form = valid * distinct * (1.0 if ends else 0.5)

    if task == "list":
        want, cat = slots["count"], slots["cat"]
        members = CATEGORIES.get(cat, [])
        listed = [w for w in words if w in _ALL_ITEMS and w != cat and not (cat != "colors" and w in COUNTS)]
        good = len({w for w in listed if w in members})
        bad = len(listed) - min(good, want)  # wrong category, duplicates, extras
        topic = 1.0 if (cat in words or good > 0) else 0.0
        correct = max(0.0, (min(good, want) - 0.5 * bad) / want)
        lo, hi = want + 1, want + 7
    elif task in ("describe", "review"):
        if task == "describe":
            topic = 0.5 * (slots["animal"] in words) + 0.5 * (slots["color"] in words)
        else:
            topic = float(slots["item"] in words)
        correct = _tone_share(sentences, words, slots["tone"])
        lo, hi = LENGTH_WINDOW[task]
    else:  # math
        a, b = slots["a"], slots["b"]
        nums = [NUMBERS.index(w) for w in words if w in NUMBERS]
        topic = 1.0 if (NUMBERS[a] in words and NUMBERS[b] in words) or "answer" in words else 0.0
        stated = nums[-1] if nums else None
        correct = 0.0 if stated is None else {0: 1.0, 1: 0.4}.get(abs(stated - (a + b)), 0.0)
        lo, hi = LENGTH_WINDOW[task]
    if topic == 0.0:
        correct = 0.0
    return {"topic": topic, "correct": correct, "form": form, "length": _length_score(len(words), lo, hi)}


_ALL_ITEMS = {w for ws in CATEGORIES.values() for w in ws} | set(CATEGORIES)


def combine(c: dict[str, float]) -> float:
    """Gold reward from components: content (topic + 2 correct)/3 times style sqrt(form x length)."""
    content = (c["topic"] + 2.0 * c["correct"]) / 3.0 if c["topic"] > 0 else 0.0
    return content * math.sqrt(c["form"] * c["length"])


def gold_reward(prompt: str, response: str) -> float:
    """The known gold reward in [0, 1] (deterministic, pure Python)."""
    return combine(gold_components(prompt, response))


# --- a generator of responses of varied quality --------------------------------------

def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _good_sentences(task: str, s: dict, rng: random.Random, flawed: bool) -> list[str]:
    """A correct answer's sentences; ``flawed`` puts wrong content in (wrong items / tone / sum)."""
    if task == "list":
        members = CATEGORIES[s["cat"]]
        n = s["count"]
        if flawed:
            n = max(1, n + rng.choice([-1, 1, 2]))
        others = [w for c, ws in CATEGORIES.items() if c != s["cat"] for w in ws]
        items = rng.sample(members, min(n, len(members)))
        if flawed:
            for i in rng.sample(range(len(items)), rng.randint(0, len(items))):
                items[i] = rng.choice(others)
        head = len(items) == 1 or rng.random() < 0.7
        text = f"here are {NUMBERS[s['count']]} {s['cat']}: {_join(items)}." if head else f"{_join(items)}."
        return [text]
    if task in ("describe", "review"):
        tone = s["tone"]
        if flawed and rng.random() < 0.5:
            tone = "negative" if tone == "positive" else "positive"
        words = POSITIVE if tone == "positive" else NEGATIVE
        other = NEGATIVE if tone == "positive" else POSITIVE
        pick = [rng.choice(words) for _ in range(3)]
        if flawed:  # a mixed message
            pick[rng.randrange(3)] = rng.choice(other)
        like = "i like it a lot." if tone == "positive" else "i do not like it."
        if task == "describe":
            color, animal = s["color"], s["animal"]
            if flawed and rng.random() < 0.15:
                color, animal = rng.choice(COLORS), rng.choice(ANIMALS)
            second = rng.choice([f"it looks {pick[2]}.", like])
            return [f"the {color} {animal} is {pick[0]} and {pick[1]}.", second]
        buy = "i would buy it again." if tone == "positive" else "i would not buy it again."
        item = rng.choice(ITEMS) if flawed and rng.random() < 0.15 else s["item"]
        return [f"this {item} is {pick[0]} and {pick[1]}.", like, buy][: rng.choice([2, 3, 3])]
    a, b = s["a"], s["b"]
    total = a + b
    if flawed:
        total = max(0, min(18, total + rng.choice([-2, -1, 1, 1, 2, 3])))
    if rng.random() < 0.75:
        return [f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[total]}."]
    return [f"the answer is {NUMBERS[total]}."]


def sample_response(prompt: str, rng: random.Random, quality: float) -> str:
    """An answer to ``prompt`` whose expected gold reward rises with ``quality`` in [0, 1].

    Each flaw is drawn independently with a probability proportional to 1 - quality:
    wrong content, off-topic, rambling (fillers appended), repetition, truncation,
    too short; an empty answer is rare.
    """
    task, slots = parse_prompt(prompt)
    bad = 1.0 - min(1.0, max(0.0, quality))
    if task == "unknown" or rng.random() < 0.25 * bad:  # off-topic: answer some other prompt
        other = sample_prompt(rng)
        t, s = parse_prompt(other)
        sentences = _good_sentences(t, s, rng, flawed=False)
    else:
        sentences = _good_sentences(task, slots, rng, flawed=rng.random() < 0.8 * bad)
    if rng.random() < 0.02 * bad:
        return ""
    if rng.random() < 0.5 * bad:  # rambling
        sentences = sentences + rng.sample(FILLERS, rng.randint(1, 4))
    if rng.random() < 0.4 * bad:  # repetition
        k = rng.randrange(len(sentences))
        sentences = sentences[: k + 1] + [sentences[k]] * rng.randint(1, 4) + sentences[k + 1:]
    text = " ".join(sentences)
    if rng.random() < 0.3 * bad:  # stutter: one word said twice
        ws = text.split(" ")
        i = rng.randrange(len(ws))
        text = " ".join(ws[:i] + [ws[i].rstrip(".,:")] + ws[i:])
    r = rng.random()
    if r < 0.2 * bad:  # truncated mid-sentence
        ws = text.split(" ")
        text = " ".join(ws[: max(1, rng.randint(len(ws) // 3, max(1, len(ws) - 1)))]).rstrip(".,:")
    elif r < 0.35 * bad:  # too short
        text = " ".join(text.split(" ")[:2]).rstrip(".,:") + "."
    return text


def corpus(n: int, seed: int) -> list[str]:
    """``n`` prompt+response texts for tokenizer training (plus one line covering the whole vocabulary)."""
    rng = random.Random(seed)
    vocab = sorted({w for ws in CATEGORIES.values() for w in ws} | set(CATEGORIES) | set(ITEMS) | set(POSITIVE)
                   | set(NEGATIVE) | set(TONES) | set(NUMBERS))
    out = [" ".join(vocab)]
    for _ in range(n):
        p = sample_prompt(rng)
        out.append(p + " " + sample_response(p, rng, rng.random()))
    return out
