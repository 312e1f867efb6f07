"""Importing a function the user names: ``MODULE:FN`` (an importable module) or ``FILE.py:FN``.

One rule for every place that runs user code by name — difficulty functions
(``function:MODULE:FN``) and gold judges (``gold:MODULE:FN``). This is the user's own
code, named by the user, so it runs without ``--trust-remote-code`` (that flag guards code
shipped *with* a model or dataset).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Callable

from .errors import CurryError


def load_function(target: str, what: str) -> Callable:
    """``target`` = ``MODULE:FN`` or ``path/to/file.py:FN``; ``what`` names the setting in errors."""
    module_name, sep, fn_name = target.rpartition(":")
    if not sep or not module_name or not fn_name:
        raise CurryError(f"{what}: expected MODULE:FUNCTION or FILE.py:FUNCTION, got {target!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise CurryError(f"{what}: file {module_name} not found")
            spec = importlib.util.spec_from_file_location(f"_currydpo_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise CurryError(f"{what}: cannot import {module_name} ({e}); check the module path") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise CurryError(f"{what}: {module_name} has no function {fn_name!r}")
    return fn
