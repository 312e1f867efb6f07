"""One error type for everything the user can fix.

A `CurryError` is printed by the CLI as a single line (no traceback unless
`--debug`) and turns into a non-zero exit code. Messages say what was wrong,
where (file, row, field or config key), the offending value, and the fix.
`check_choice` and `check_positive` word the config-key errors of every section's validator alike.
"""

from __future__ import annotations


class CurryError(Exception):
    """A user-facing error: bad input data, bad config, missing file."""


def where(source: str | None, row: int | None = None, field: str | None = None) -> str:
    """Format a location prefix like ``data.jsonl row 17 field 'chosen'``."""
    parts = [str(source) if source else "<input>"]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return " ".join(parts)


def check_choice(key: str, value: str, valid: list[str] | tuple[str, ...]) -> None:
    """A config key's value is one of ``valid``; the message lists them. Used by every section's validator."""
    if value not in valid:
        raise CurryError(f"config key '{key}': {value!r} is not valid; choose one of: {', '.join(valid)}")


def check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise CurryError(f"config key '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")


class BadRow(CurryError):
    """A data row that fails validation. ``reason`` is a short category used for skip counts."""

    def __init__(self, source: str | None, row: int | None, field: str | None, reason: str, detail: str = ""):
        self.source, self.row, self.field, self.reason, self.detail = source, row, field, reason, detail
        msg = f"{where(source, row, field)}: {reason}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
