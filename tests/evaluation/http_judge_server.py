"""A small real OpenAI-compatible chat-completions server for judge tests (127.0.0.1 only).

It reads both answers out of the judge prompt (the markers of
`currydpo.evaluation.judges.JUDGE_USER_TEMPLATE`) and decides deterministically.

Modes (attributes, may be changed while running):

- ``mode="longer"``: the longer answer wins, equal length -> [[C]];
- ``mode="always_a"``: position bias, always [[A]];
- ``mode="garbage"``: HTTP 200 with a body that is not JSON;
- ``mode="no_verdict"``: valid chat-completions JSON whose content has no verdict tag;
- ``reply=fn``: ``fn(request_json) -> str`` is the content of every answer (any grader);
- ``fail_first=k``: the first k requests fail: HTTP 500 (``fail_kind="500"``), a dropped
  connection (``"drop"``), HTTP 429 with ``Retry-After: retry_after`` (``"429"``), or an
  answer sent only after ``delay`` seconds (``"slow"``, a client timeout);
- ``hang_after=n``: after n answered requests every request waits until ``release`` is
  set (a judge that stalls while the client is killed);
- ``die_after=n``: after n answered requests every request is dropped (a dead server).

Counters: ``received`` (every request), ``answered`` (requests answered with a
verdict or garbage), ``bodies`` (parsed request JSON of answered requests), ``auth``
(Authorization headers), ``arrivals`` (time of every request).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ANSWER = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S)


class JudgeServer:
    def __init__(self, mode: str = "longer", fail_first: int = 0, fail_kind: str = "500", die_after: int | None = None,
                 reply=None, retry_after: str = "1", delay: float = 1.0, hang_after: int | None = None):
        self.mode, self.fail_first, self.fail_kind, self.die_after = mode, fail_first, fail_kind, die_after
        self.reply, self.retry_after, self.delay, self.hang_after = reply, retry_after, delay, hang_after
        self.release = threading.Event()
        self.arrivals: list[float] = []
        self.received = 0
        self.answered = 0
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "JudgeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def decide(self, content: str) -> str:
        if self.mode == "always_a":
            return "[[A]]"
        if self.mode == "no_verdict":
            return "Both answers have merits; I cannot decide."
        answers = dict(_ANSWER.findall(content))
        a, b = len(answers["A"]), len(answers["B"])
        return "A is longer, so [[A]]" if a > b else ("B is longer, so [[B]]" if b > a else "Same length. [[C]]")

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.received += 1
                    server.arrivals.append(time.monotonic())
                    n = server.received
                    dead = server.die_after is not None and server.answered >= server.die_after
                    hang = server.hang_after is not None and server.answered >= server.hang_after
                if hang:
                    server.release.wait()
                    return self._send(503, b'{"error": "stalled"}')
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                if dead or (n <= server.fail_first and server.fail_kind == "drop"):
                    self.close_connection = True  # no response at all: the client sees a dropped connection
                    return
                if n <= server.fail_first and server.fail_kind == "429":
                    return self._send(429, b'{"error": "rate limited"}', {"Retry-After": server.retry_after})
                if n <= server.fail_first and server.fail_kind == "slow":
                    time.sleep(server.delay)
                elif n <= server.fail_first:
                    return self._send(500, b'{"error": "transient"}')
                req = json.loads(body)
                with server.lock:
                    server.bodies.append(req)
                    server.auth.append(self.headers.get("Authorization"))
                if server.mode == "garbage":
                    out = b"<html>definitely not json"
                else:
                    verdict = server.reply(req) if server.reply else server.decide(req["messages"][-1]["content"])
                    out = json.dumps({"id": f"cmpl-{n}", "object": "chat.completion", "model": req.get("model"),
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": verdict}}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
                with server.lock:
                    server.answered += 1
                self._send(200, out)

            def _send(self, code: int, out: bytes, headers: dict | None = None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                try:
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        return Handler
