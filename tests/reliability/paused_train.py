"""`python paused_train.py ARGS...` runs the currydpo CLI with a pause point installed from the test side.

With ``CURRYDPO_TEST_PAUSE_AT=POINT:N`` the N-th time ``POINT`` is reached the process prints
``currydpo-paused POINT N`` to stderr and sleeps, so a test can SIGKILL it exactly there
(`_reliability.run_until_paused`), or signal it and let it go on: with ``CURRYDPO_TEST_RELEASE=FILE``
it goes on once FILE exists. Points, each wrapped around a library function:
``update`` (an update is logged, not yet checkpointed: the loop's ``on_batch`` hook),
``state-write`` (inside a ``state/`` write: weights written, position not yet: after the
weights' `save_file` in `checkpoint.save_state`), ``stage-end`` (``stage-K/`` saved,
``state/`` not yet advanced: after `checkpoint.save_model` of a stage directory),
``online-sample`` (a chunk of online samples written) and ``online-judge`` (one prompt's
answers judged by an LLM judge, before the chunk's file is written).
Production code carries no test hook.
"""

import os
import sys
import time


def install(spec: str) -> None:
    from currydpo.training import checkpoint, loop

    point, n = spec.rsplit(":", 1)
    hits = [0]

    release = os.environ.get("CURRYDPO_TEST_RELEASE")  # a file: once it exists, the paused process goes on

    def hit():
        hits[0] += 1
        if hits[0] == int(n):
            print(f"currydpo-paused {point} {hits[0]}", file=sys.stderr, flush=True)
            while not (release and os.path.exists(release)):
                time.sleep(0.05)

    def after(module, name, when=lambda *a, **k: True):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            if when(*args, **kwargs):
                hit()
            return result

        setattr(module, name, wrapped)

    if point == "update":  # an update is logged, not yet checkpointed: the loop's on_batch hook
        plain_train = loop.train

        def train(*args, hooks=None, **kwargs):
            hooks = hooks or loop.Hooks()
            hooks.on_batch.append(lambda run, update: hit())
            return plain_train(*args, hooks=hooks, **kwargs)

        loop.train = train
    elif point == "state-write":
        after(checkpoint, "save_file")
    elif point == "stage-end":
        after(checkpoint, "save_model", when=lambda path, *a, **k: os.path.basename(path).startswith("stage-"))
    elif point == "online-sample":  # a chunk of an online stage's samples is written
        from currydpo.generation import sampling

        after(sampling, "write_json", when=lambda path, *a, **k: os.path.basename(os.path.dirname(path)) == "samples")
    elif point == "online-judge":  # an LLM judge answered one prompt's comparisons; its chunk is not written yet
        from currydpo.evaluation import judges

        after(judges.OpenAIJudge, "compare")
    else:
        raise SystemExit(f"unknown pause point {point!r}")


if __name__ == "__main__":
    if os.environ.get("CURRYDPO_TEST_PAUSE_AT"):
        install(os.environ["CURRYDPO_TEST_PAUSE_AT"])
    from currydpo.cli import main

    sys.exit(main(sys.argv[1:]))
