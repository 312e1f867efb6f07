"""Judges behind one interface: gold functions, reward models, OpenAI-compatible LLM judges.

A judge compares two responses to the same prompt: ``compare(prompts, responses_a,
responses_b) -> list[float | None]`` with 1 = a wins, 0 = b wins, 0.5 = tie and None =
the judge abstained (its reply held no verdict; LLM judges only). Pointwise judges
also have ``score(prompts, responses) -> list[float]`` (higher is better) and get
``compare`` from their scores: equal scores (within ``tie_tolerance``) are a tie.

Specs accepted by `make_judge`:

- ``gold:module.path:function`` or ``gold:path/to/file.py:function`` — a Python
  function ``(prompt: str, response: str) -> float`` (your own code, imported);
- ``reward-model:PATH`` — any Hugging Face ``AutoModelForSequenceClassification`` with
  one output (a reward model), scoring each (prompt, response) through its chat
  template when it has one;
- ``openai:URL[#model]`` — a pairwise LLM judge behind an OpenAI-compatible
  ``POST {URL}/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp server ...). See
  `OpenAIJudge` for the judge prompt and order swapping, `ChatClient` for retries,
  abstentions and the verdict cache. MT-bench's single-answer 1-10 grading over the same
  transport is `mt_bench.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from ..config import JUDGE_KINDS
from ..curriculum.reward_model import RewardModel
from ..errors import CurryError
from ..userfn import load_function

VALID_SPECS = "gold:MODULE:FUNCTION, gold:FILE.py:FUNCTION, reward-model:PATH, openai:URL[#MODEL]"


@runtime_checkable
class Judge(Protocol):
    """Anything with ``spec`` and a pairwise ``compare``; pointwise judges add ``score``."""

    spec: str

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str],
                responses_b: Sequence[str]) -> list[float | None]: ...


def prompt_texts(prompts: Sequence[Any]) -> list[str]:
    """Prompts as the strings a judge sees: `Prompt.text` for `Prompt`s, strings unchanged."""
    return [p if isinstance(p, str) else str(p.text) for p in prompts]


def outcomes_from_scores(scores_a: Sequence[float], scores_b: Sequence[float],
                         tie_tolerance: float = 0.0) -> list[float]:
    """1 where a scores higher than b by more than ``tie_tolerance``, 0 where lower, else 0.5."""
    out = []
    for a, b in zip(scores_a, scores_b, strict=True):
        out.append(0.5 if abs(a - b) <= tie_tolerance else (1.0 if a > b else 0.0))
    return out


def _check_lengths(prompts, *responses) -> None:
    lens = {len(prompts), *(len(r) for r in responses)}
    if len(lens) != 1:
        raise CurryError(f"judge inputs differ in length: {len(prompts)} prompts vs "
                         f"{[len(r) for r in responses]} responses; pass one response per prompt")


class PointwiseJudge:
    """Base for judges that score each response; ``compare`` is derived from the scores."""

    spec: str = "pointwise"
    tie_tolerance: float = 0.0

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str],
                responses_b: Sequence[str]) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        return outcomes_from_scores(self.score(prompts, responses_a), self.score(prompts, responses_b),
                                    self.tie_tolerance)


# ---------------------------------------------------------------------------- gold


class GoldJudge(PointwiseJudge):
    """Scores with a Python function ``(prompt, response) -> float`` (e.g. a known gold reward)."""

    def __init__(self, fn: Callable[[str, str], float], spec: str, tie_tolerance: float = 0.0):
        self.fn, self.spec, self.tie_tolerance = fn, spec, tie_tolerance

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        _check_lengths(prompts, responses)
        return [float(self.fn(p, r)) for p, r in zip(prompt_texts(prompts), responses)]


# -------------------------------------------------------------------- reward model


class RewardModelJudge(RewardModel, PointwiseJudge):
    """A reward model (`curriculum.reward_model.RewardModel`) as a pointwise judge."""

    def __init__(self, path: str, *, spec: str | None = None, tie_tolerance: float = 0.0, **kwargs):
        self.spec, self.tie_tolerance = spec or f"reward-model:{path}", tie_tolerance
        super().__init__(path, what=f"judge spec {self.spec!r}", **kwargs)

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        _check_lengths(prompts, responses)
        return super().score(prompt_texts(prompts), responses)


# ------------------------------------------------------------ OpenAI-compatible LLM

JUDGE_PROMPT_VERSION = "pair-v1"

JUDGE_SYSTEM_PROMPT = (
    "You are a careful, impartial judge. You will see a question from a user and two answers written by "
    "two assistants, A and B. Decide which answer serves the user better: consider whether it is correct, "
    "helpful, relevant, complete at the right level of detail, and clearly written. The order in which the "
    "answers appear and their length must not sway you, nor the assistants' names. First explain your "
    "comparison in a few sentences. Then give your verdict on the last line, exactly in this form: "
    '"[[A]]" if answer A is better, "[[B]]" if answer B is better, "[[C]]" if they are equally good.'
)

JUDGE_USER_TEMPLATE = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)

_VERDICTS = ("[[A]]", "[[B]]", "[[C]]")


def parse_verdict(text: str) -> str | None:
    """``"A"``, ``"B"`` or ``"C"`` from the judge's answer: the LAST verdict tag in it; None if none."""
    best, best_pos = None, -1
    for tag in _VERDICTS:
        pos = text.rfind(tag)
        if pos > best_pos:
            best, best_pos = tag[2], pos
    return best


class _Transient(Exception):
    """A failure worth retrying: connection error, timeout, HTTP 429 or 5xx."""

    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


RETRY_AFTER_MAX_S = 600.0  # the longest Retry-After we wait


def retry_after_seconds(value: str | None) -> float | None:
    """HTTP ``Retry-After``: delta-seconds or an HTTP date (RFC 9110 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class ChatClient:
    """Asks an OpenAI-compatible ``POST {URL}/chat/completions`` endpoint, parses the reply, caches the result.

    Shared by the pairwise `OpenAIJudge` and the single-answer MT-bench grader (`mt_bench.py`).

    - Connection errors, timeouts, HTTP 429 and 5xx are retried with exponential back-off
      (``backoff_s * 2**attempt``, capped at ``max_backoff_s``; when the server sends
      ``Retry-After`` that is waited instead, up to `RETRY_AFTER_MAX_S`) up to
      ``max_attempts`` tries, then `CurryError`
      (one line). Other HTTP 4xx (bad model name, bad key) raise at once.
    - A reply ``parse`` cannot read (no verdict, not chat-completions JSON, null content)
      is asked again up to ``max_attempts`` times; then ``ask`` returns None — an
      abstention, counted in ``stats["unparseable"]`` and **never cached**, so a re-run
      against a fixed endpoint asks again.
    - Cache: with ``cache_path`` every parsed result is appended (flushed, fsynced) as one
      JSON line ``{key, verdict, judge}``; a torn last line from a kill is skipped. Rows
      with a null verdict (older versions cached abstentions) are ignored.
    """

    def __init__(self, url: str, model: str | None, *, spec: str, cache_path: str | os.PathLike | None = None,
                 max_attempts: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 timeout_s: float = 120.0, temperature: float = 0.0, max_tokens: int = 1024,
                 api_key: str | None = None):
        if max_attempts < 1:
            raise CurryError(f"openai judge: max_attempts must be >= 1, got {max_attempts}")
        self.url, self.model, self.spec = url.rstrip("/"), model, spec
        # The model name when given, else the URL: a restarted server on a new port reuses the cache.
        self.identity = f"openai#{model}" if model else f"openai:{self.url}"
        self.max_attempts, self.backoff_s, self.max_backoff_s = max_attempts, backoff_s, max_backoff_s
        self.timeout_s, self.temperature, self.max_tokens = timeout_s, temperature, max_tokens
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.stats = {"requests": 0, "retries": 0, "cached": 0, "unparseable": 0}
        self.usage: dict[str, float] = {}  # summed numeric "usage" fields of the answers (tokens, cost if given)
        self.lock = threading.Lock()
        self._cache: dict[str, Any] = {}
        self.cache_path = Path(cache_path) if cache_path is not None else None
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self._load_cache()

    def _load_cache(self) -> None:
        if not self.cache_path.exists():
            return
        with open(self.cache_path, "rb+") as f:  # end a torn last line so new appends start clean
            if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                f.write(b"\n")
        with open(self.cache_path, encoding="utf-8") as f:
            for line in f:
                try:  # a run killed mid-write may leave a torn last line: skip it
                    row = json.loads(line)
                    if row["verdict"] is not None:
                        self._cache[row["key"]] = row["verdict"]
                except (ValueError, KeyError, TypeError):
                    continue

    def key(self, *parts: Any) -> str:
        """sha256 of (judge identity, ``parts``): what a cached verdict answers."""
        payload = json.dumps([self.identity, *parts], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _store(self, key: str, verdict: Any) -> None:
        with self.lock:
            self._cache[key] = verdict
            if self.cache_path is not None:
                with open(self.cache_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "verdict": verdict, "judge": self.identity}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())

    def _client(self):
        """The `openai` SDK client for the endpoint (made once). Its own retries are off: `ask` retries, so
        that a reply without a verdict is asked again, every retry is counted, and Retry-After is honoured
        up to `RETRY_AFTER_MAX_S`; the SDK gives the transport, auth header, timeout and error types."""
        if getattr(self, "_sdk", None) is None:
            import openai

            self._sdk = openai.OpenAI(base_url=self.url, api_key=self.api_key or "not-needed",
                                      timeout=self.timeout_s, max_retries=0)
        return self._sdk

    def _post(self, body: dict) -> dict:
        import openai

        client = self._client()
        with self.lock:
            self.stats["requests"] += 1
        extra = {} if self.model else {"extra_body": {}}
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=self.model or "", messages=body["messages"], temperature=body["temperature"],
                max_tokens=body["max_tokens"], **extra)
            text = raw.http_response.text
        except openai.APIStatusError as e:
            code, detail = e.status_code, (e.response.text or "")[:200]
            if code == 429 or code >= 500:
                raise _Transient(f"HTTP {code}: {detail}", retry_after_seconds(e.response.headers.get("retry-after")))
            raise CurryError(f"judge {self.spec}: HTTP {code} from {self.url}/chat/completions ({detail}); "
                             "check the URL, the model name after '#' and OPENAI_API_KEY") from None
        except (openai.APIConnectionError, openai.APITimeoutError) as e:  # refused, reset, timed out
            raise _Transient(f"{type(e).__name__}: {e}") from e
        try:
            return json.loads(text)
        except ValueError:
            return {}  # not JSON: an answer without a verdict

    def _add_usage(self, data: dict) -> None:
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            with self.lock:
                for k, v in usage.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        self.usage[k] = self.usage.get(k, 0) + v

    def _sleep(self, attempt: int, retry_after: float | None = None) -> None:
        if attempt + 1 < self.max_attempts:
            if retry_after is not None:  # the server said how long: wait that (bounded, a bad header cannot hang us)
                time.sleep(min(retry_after, RETRY_AFTER_MAX_S))
            else:
                time.sleep(min(self.backoff_s * 2 ** attempt, self.max_backoff_s))

    def ask(self, messages: list[dict], parse: Callable[[str], Any], key: str | None = None) -> Any:
        """``parse(reply)`` of the endpoint's reply to ``messages``, from the cache or the server; None = abstained.
        ``key`` defaults to the hash of the messages."""
        key = key or self.key(messages)
        with self.lock:
            if key in self._cache:
                self.stats["cached"] += 1
                return self._cache[key]
        body = {"messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.model:
            body["model"] = self.model
        last_error = ""
        for attempt in range(self.max_attempts):
            if attempt:
                with self.lock:
                    self.stats["retries"] += 1
            try:
                data = self._post(body)
            except _Transient as e:
                last_error = str(e)
                self._sleep(attempt, e.retry_after)
                continue
            self._add_usage(data)
            try:
                content = data["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                content = ""
            verdict = parse(content if isinstance(content, str) else "")
            if verdict is not None:
                self._store(key, verdict)
                return verdict
            last_error = "unparseable"
            self._sleep(attempt)
        if last_error == "unparseable":
            with self.lock:
                self.stats["unparseable"] += 1
            return None
        raise CurryError(f"judge {self.spec}: {self.url}/chat/completions failed {self.max_attempts} times "
                         f"(last: {last_error}); verdicts so far are cached, re-run to resume")


def run_concurrently(fn: Callable, jobs: Sequence[tuple], concurrency: int, desc: str | None = None) -> list:
    """``[fn(*job) for job in jobs]`` on ``concurrency`` threads, in order; the first error cancels the rest."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        it = futures
        if desc:
            from ..progress import progress_bar

            it = progress_bar(futures, desc=desc, unit="verdict")
        try:
            return [f.result() for f in it]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


class OpenAIJudge:
    """Pairwise LLM judge over an OpenAI-compatible chat-completions endpoint (transport: `ChatClient`).

    Each comparison is asked twice, with the answers in both orders (A, B) and (B, A).
    The outcome for ``a`` is its verdict when both orders agree and a tie (0.5) when
    they disagree — so a judge that always prefers the first position yields ties
    (MT-bench's pairwise "swap" rule; the paper's adjusted win rate counts ties as 1/2).
    When either order stays unparseable the comparison is an abstention: ``compare``
    returns None for it (not a tie), and `win_rate_report` counts it apart.

    Cache: ``{cache_dir}/judge_verdicts.jsonl``, keyed by the sha256 of (judge identity,
    judge-prompt version, prompt, first answer, second answer).
    """

    def __init__(self, url: str, model: str | None = None, *, spec: str | None = None,
                 cache_dir: str | os.PathLike | None = None, max_attempts: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, timeout_s: float = 120.0, concurrency: int = 4,
                 temperature: float = 0.0, max_tokens: int = 1024, api_key: str | None = None,
                 progress: bool = False):
        if concurrency < 1:
            raise CurryError(f"openai judge: concurrency must be >= 1, got {concurrency}")
        self.spec = spec or (f"openai:{url}" + (f"#{model}" if model else ""))
        self.client = ChatClient(url, model, spec=self.spec, max_attempts=max_attempts, backoff_s=backoff_s,
                                 max_backoff_s=max_backoff_s, timeout_s=timeout_s, temperature=temperature,
                                 max_tokens=max_tokens, api_key=api_key,
                                 cache_path=None if cache_dir is None else Path(cache_dir) / "judge_verdicts.jsonl")
        self.url, self.model, self.identity = self.client.url, model, self.client.identity
        self.cache_path = self.client.cache_path
        self.concurrency, self.progress = concurrency, progress
        self.stats = self.client.stats
        self.stats["inconsistent"] = 0
        self.usage = self.client.usage

    def cache_key(self, prompt: str, first: str, second: str) -> str:
        return self.client.key(JUDGE_PROMPT_VERSION, prompt, first, second)

    def _ask(self, prompt: str, first: str, second: str) -> str | None:
        """One ordered verdict ("A"/"B"/"C", None = abstained), from cache or the server."""
        messages = [{"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                    {"role": "user", "content": JUDGE_USER_TEMPLATE.format(
                        question=prompt, answer_a=first, answer_b=second)}]
        return self.client.ask(messages, parse_verdict, self.cache_key(prompt, first, second))

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str],
                responses_b: Sequence[str]) -> list[float | None]:
        _check_lengths(prompts, responses_a, responses_b)
        texts = prompt_texts(prompts)
        jobs = [(p, a, b) for p, a, b in zip(texts, responses_a, responses_b)]
        jobs += [(p, b, a) for p, a, b in zip(texts, responses_a, responses_b)]
        verdicts = run_concurrently(self._ask, jobs, self.concurrency,
                                    f"judge {self.identity}" if self.progress else None)
        n = len(texts)
        out: list[float | None] = []
        for v1, v2 in zip(verdicts[:n], verdicts[n:]):
            if v1 is None or v2 is None:
                out.append(None)
                continue
            o1 = {"A": 1.0, "B": 0.0}.get(v1, 0.5)  # a shown first
            o2 = {"B": 1.0, "A": 0.0}.get(v2, 0.5)  # a shown second
            if o1 != o2:
                with self.client.lock:
                    self.stats["inconsistent"] += 1
            out.append(o1 if o1 == o2 else 0.5)
        return out


# ------------------------------------------------------------------------ factory


def openai_spec(spec: str) -> tuple[str, str | None]:
    """``openai:URL[#MODEL]`` -> (URL, MODEL or None)."""
    kind, _, rest = spec.partition(":")
    url, _, model = rest.partition("#")
    if kind != "openai" or not url.startswith(("http://", "https://")):
        raise CurryError(f"judge spec {spec!r}: expected openai:URL[#MODEL] with a URL starting with http:// or "
                         "https:// (e.g. openai:http://localhost:8000/v1#my-judge)")
    return url, model or None


def make_judge(spec: str, *, cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False,
               tie_tolerance: float = 0.0, batch_size: int = 8, device: str | None = None,
               max_attempts: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
               timeout_s: float = 120.0, concurrency: int = 4, progress: bool = False) -> Judge:
    """Build a judge from a spec string (see the module docstring for the forms)."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in JUDGE_KINDS:
        raise CurryError(f"unknown judge spec {spec!r}; valid forms: {VALID_SPECS}")
    if kind == "gold":
        return GoldJudge(load_function(rest, f"judge spec {spec!r}"), spec, tie_tolerance)
    if kind == "reward-model":
        return RewardModelJudge(rest, spec=spec, batch_size=batch_size, device=device,
                                trust_remote_code=trust_remote_code, tie_tolerance=tie_tolerance)
    url, model = openai_spec(spec)  # the last of JUDGE_KINDS: openai
    return OpenAIJudge(url, model or None, spec=spec, cache_dir=cache_dir, max_attempts=max_attempts,
                       backoff_s=backoff_s, max_backoff_s=max_backoff_s, timeout_s=timeout_s,
                       concurrency=concurrency, progress=progress)
