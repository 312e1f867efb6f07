"""Where work shared across runs is kept: ``run.cache_dir``.

Token ids (`training.tokencache`) and the initial reference's log-probs (`training.refstore`) are the
same for every arm and seed of a comparison and for a re-run; they are stored here, each under a
fingerprint of everything that decides them, so a changed tokenizer, model or data never reads a stale
value. Deleting the directory only costs the recomputation.
"""

from __future__ import annotations

import os


def cache_root(setting: str) -> str | None:
    """``run.cache_dir`` resolved: ``none`` -> no cache; ``auto`` -> ``$CURRYDPO_CACHE``, else
    ``$XDG_CACHE_HOME/currydpo``, else ``~/.cache/currydpo``; anything else is the directory itself."""
    if setting == "none":
        return None
    if setting != "auto":
        return os.path.expanduser(setting)
    if os.environ.get("CURRYDPO_CACHE"):
        return os.path.expanduser(os.environ["CURRYDPO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "currydpo")
