"""Load preference data from local files or the Hugging Face Hub into `Record`s.

Local json/jsonl/parquet/csv files (one file, a directory, or a glob) go through
`datasets.load_dataset(<builder>, data_files=...)` with a throw-away cache, so nothing
is left beside the user's data. A name that is not a local path is tried on the Hub.

When `datasets` fails on a broken file its message rarely says where; we then scan the
file ourselves and report the first bad line. If our scan finds the file valid (e.g. a
``NaN`` that Python's json accepts but Arrow's does not), we use our parse instead.

Row numbers are 1-based as the user sees them: line numbers for JSON lines files,
data-row numbers for csv/parquet/JSON arrays and Hub splits.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import logging
import os
import random
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import BadRow, CurryError
from ..progress import progress_bar
from .formats import ON_BAD_ROW, check_format, check_score, convert_rows, detect_format, regroup_pairwise
from .records import Record

BUILDER_OF = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class LoadResult:
    """What `load_records` returns: records plus the counts the CLI summary prints."""

    records: list[Record]
    rows_read: int
    bad_rows: dict[str, int]  # reason -> count (only with on_bad_row="skip")
    format: str


@dataclass
class Table:
    """Rows of one source (a file or a Hub split) and how to number them for the user."""

    source: str
    rows: list[Any]
    line_of: Callable[[int], int]


# ----------------------------------------------------------------------------- local files

def _suffix(path: Path) -> str:
    """'.jsonl' for data.jsonl and data.jsonl.gz; '' for an unsupported name."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes and suffixes[-1] in BUILDER_OF else ""


def looks_like_path(source: str) -> bool:
    """True when ``source`` cannot be a Hub name, so a miss means 'file not found'."""
    return (source.startswith(("/", ".", "~")) or os.sep + os.sep in source or source.count("/") > 1
            or any(c in source for c in "*?[") or _suffix(Path(source)) != "")


def local_files(source: str) -> list[Path] | None:
    """The data files ``source`` names, or None when it is not a local path (a Hub name)."""
    if not str(source).strip():  # Path("") is the current directory: it would read every data file there
        raise CurryError("data path is empty: set data.path (or --data) to a file, a directory, or a hub dataset")
    path = Path(os.path.expanduser(source))
    if any(c in source for c in "*?["):
        files = [Path(p) for p in sorted(glob.glob(os.path.expanduser(source), recursive=True)) if Path(p).is_file()]
        if not files:
            raise CurryError(f"{source}: no files match this pattern")
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _suffix(p))
        if not files:
            raise CurryError(f"{source}: directory holds no .jsonl/.json/.parquet/.csv files")
    elif path.is_file():
        files = [path]
    elif looks_like_path(source):
        raise CurryError(f"{source}: file not found; check the path")
    else:
        return None
    for f in files:
        if not _suffix(f):
            raise CurryError(f"{f}: unsupported file type; use .jsonl, .json, .parquet or .csv (optionally .gz)")
    return files


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _jsonl_line_numbers(path: Path) -> list[int]:
    """1-based line number of each non-blank line: row i of the dataset is line lines[i]."""
    with _open_bytes(path) as f:
        return [n for n, line in enumerate(f, 1) if line.strip()]


def _parse_json_lines(path: Path) -> tuple[list[Any], list[int]]:
    """Our own strict-but-Python parse; raises a CurryError at the first bad line."""
    rows, lines = [], []
    with _open_bytes(path) as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CurryError(f"{path} line {n}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                 "re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CurryError(f"{path} line {n}: invalid JSON ({e.msg} at column {e.colno}); "
                                 "fix or remove this line (truncated file?)") from None
            lines.append(n)
    if not rows:
        raise CurryError(f"{path}: file is empty; expected one JSON object per line")
    return rows, lines


def _parse_json_document(path: Path) -> list[Any]:
    """A .json file holding one array (or object); falls back to JSON lines."""
    with _open_bytes(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CurryError(f"{path} line {line}: invalid UTF-8 (byte 0x{data[e.start]:02x}); "
                         "re-save the file as UTF-8") from None
    if not text.strip():
        raise CurryError(f"{path}: file is empty; expected a JSON array of objects or JSON lines")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("["):
            raise CurryError(f"{path} line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        return _parse_json_lines(path)[0]
    return doc if isinstance(doc, list) else [doc]


def _scan_after_failure(path: Path, err: Exception) -> Table:
    """`datasets` failed: find the bad line ourselves, or use our parse if the file is fine."""
    ext = _suffix(path)
    if ext == ".jsonl":
        rows, lines = _parse_json_lines(path)
        return Table(str(path), rows, lines.__getitem__)
    if ext == ".json":
        rows = _parse_json_document(path)
        return Table(str(path), rows, lambda i: i + 1)
    if ext == ".csv":
        with _open_bytes(path) as f:
            for n, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CurryError(f"{path} line {n}: invalid UTF-8 (byte 0x{raw[e.start]:02x}); "
                                     "re-save the file as UTF-8") from None
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause).strip():
        first += f": {str(cause).strip().splitlines()[0]}"
    raise CurryError(f"{path}: cannot read {ext[1:]} file ({first})")


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars or error logs from `datasets` while we load (we report errors ourselves)."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    loggers = [logging.getLogger(name) for name in ("datasets", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    datasets.disable_progress_bars()
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def read_file(path: Path) -> Table:
    """All rows of one local file as Python objects, numbered as the user sees them."""
    import datasets

    ext = _suffix(path)
    if path.stat().st_size == 0:
        raise CurryError(f"{path}: file is empty")
    if ext in (".json", ".jsonl"):
        check_nesting(path)
    try:
        # A throw-away cache: Arrow files must not pile up in ~/.cache or beside the data.
        with quiet_datasets(), tempfile.TemporaryDirectory(prefix="currydpo-ds-") as cache:
            ds = datasets.load_dataset(BUILDER_OF[ext], data_files=str(path), split="train", cache_dir=cache)
            rows = ds.to_list()
    except Exception as e:  # datasets wraps parse errors in many types; we diagnose below
        return _scan_after_failure(path, e)
    if ext == ".jsonl" or (ext == ".json" and not _starts_with(path, b"[")):
        lines = _jsonl_line_numbers(path)
        if len(lines) == len(rows):
            return Table(str(path), rows, lines.__getitem__)
    # csv: row 1 is the first data row after the header.
    return Table(str(path), rows, lambda i: i + 1)


MAX_DEPTH = 100  # a real row (a chat of messages) is a few levels deep
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _depth(data: bytes) -> int:
    """How deep the JSON in ``data`` nests: strings dropped, then a running count of the brackets left."""
    import numpy as np

    brackets = np.frombuffer(_STRING.sub(b"", data).translate(None, _NOT_BRACKET), dtype=np.uint8)
    if not len(brackets):
        return 0
    return int(np.cumsum(np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)).max())


def check_nesting(path: Path) -> None:
    """Refuse JSON nested more than ``MAX_DEPTH`` levels: Arrow's JSON reader crashes the process (SIGSEGV) at
    ~10,000 levels and Python's json raises RecursionError at ~2,000, so neither may read such a file."""
    with _open_bytes(path) as f:
        data = f.read()
    if _depth(data) <= MAX_DEPTH:
        return
    n = next((n for n, line in enumerate(data.split(b"\n"), 1) if _depth(line) > MAX_DEPTH), None)
    where = f" line {n}" if n else ""
    raise CurryError(f"{path}{where}: JSON nested more than {MAX_DEPTH} levels deep; not preference data (each "
                     f"row is an object of prompt and responses)")


def _starts_with(path: Path, prefix: bytes) -> bool:
    with _open_bytes(path) as f:
        return f.read(4096).lstrip().startswith(prefix)


# ----------------------------------------------------------------------------- hub

def read_hub(name: str, split: str, subset: str | None, trust_remote_code: bool) -> Table:
    """A Hub dataset split (uses the normal HF cache: that is what it is for)."""
    import datasets

    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        with quiet_datasets():
            ds = datasets.load_dataset(name, subset, split=split, **kwargs)
            rows = ds.to_list()
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        offline = isinstance(e, (ConnectionError, TimeoutError)) or any(
            w in msg.lower() for w in ("offline", "connect", "network", "resolve", "timed out"))
        if offline:
            raise CurryError(f"{name}: not a local file, and the Hugging Face Hub is unreachable ({msg}); "
                             "check the path, or go online / download the dataset first") from None
        raise CurryError(f"{name}: not a local file, and loading it from the Hugging Face Hub failed "
                         f"(split={split!r}, subset={subset!r}): {msg}") from None
    return Table(f"{name}[{split}]", rows, lambda i: i + 1)


# ----------------------------------------------------------------------------- records

def in_memory_tables(source, split: str) -> list[Table] | None:
    """A `datasets.Dataset`, a `DatasetDict` (its ``split``) or a ``save_to_disk`` folder as a table;
    None for anything else (a file, a glob, a hub name)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.path.expanduser(source))
        if not (path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())):
            return None
    import datasets

    if isinstance(source, (str, os.PathLike)):
        with quiet_datasets():
            source = datasets.load_from_disk(str(path))
        name = str(path)
    else:
        name = type(source).__name__
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise CurryError(f"{name}: no split {split!r}; it has {', '.join(source)} (set data.split)")
        source, name = source[split], f"{name}[{split}]"
    if not isinstance(source, datasets.Dataset):
        raise CurryError(f"data must be a path, a hub name, a datasets.Dataset or DatasetDict, got "
                         f"{type(source).__name__}")
    return [Table(name, source.to_list(), lambda i: i + 1)]


def load_records(source, format: str = "auto", *, split: str = "train", subset: str | None = None,
                 score: str = "mean-aspects", on_bad_row: str = "error", limit: int | None = None,
                 trust_remote_code: bool = False, columns: list[str] | None = None, weight: float | None = None,
                 seed: int = 0, progress: bool = True) -> LoadResult:
    """Read ``source`` and convert every row to validated `Record`s. ``source``: a local file, a glob, a
    directory of files, a hub name, a `datasets.Dataset` / `DatasetDict` or a ``save_to_disk`` folder.

    ``format``: one of `formats.FORMATS` or "auto" (detected from the first row).
    ``on_bad_row``: "error" raises the first `BadRow`; "skip" counts it by reason.
    ``limit``: stop after this many records (rows after that are not read).
    ``columns``: read only these columns; ``weight``: keep this fraction of the rows (seeded by ``seed``, file
    order kept) — a mixture source's settings (`load_mixture`).
    """
    check_format(format)
    check_score(score)
    if on_bad_row not in ON_BAD_ROW:
        raise CurryError(f"unknown on_bad_row {on_bad_row!r}; choose one of: {', '.join(ON_BAD_ROW)}")
    if limit is not None and limit < 1:
        raise CurryError(f"limit must be >= 1, got {limit}")
    tables = in_memory_tables(source, split)
    if tables is not None:
        source = tables[0].source
    elif (files := local_files(source)) is None:
        tables = [read_hub(source, split, subset, trust_remote_code)]
    else:
        tables = [read_file(f) for f in files]
    if columns is not None or weight is not None:
        tables = [select_rows(t, columns, weight, seed) for t in tables]
    fmt = format
    if fmt == "auto":
        first = next((t for t in tables if t.rows), None)
        if first is None:
            raise CurryError(f"{source}: no rows to read")
        fmt = detect_format(first.rows[0], first.source)
    records: list[Record] = []
    bad: Counter[str] = Counter()
    rows_read = 0
    full = False
    with progress_bar(total=sum(len(t.rows) for t in tables), desc="reading rows", unit="row",
                      enabled=progress) as bar:
        for table in tables:
            done = 0  # rows of this table fully converted
            for i, item in convert_rows(table.rows, fmt, source=table.source, score=score, line_of=table.line_of):
                if isinstance(item, BadRow):
                    if on_bad_row == "error":
                        raise item
                    bad[item.reason] += 1
                else:
                    if len(tables) > 1 and item.id == str(item.row):
                        item.id = f"{Path(table.source).name}:{item.id}"  # row ids are only unique per file
                    records.append(item)
                bar.update(max(0, i + 1 - done))
                done = max(done, i + 1)
                full = limit is not None and len(records) >= limit
                if full:
                    break
            rows_read += done if full else len(table.rows)
            if full:
                break
            bar.update(len(table.rows) - done)
    if fmt == "pairwise":
        records = regroup(records, source)
    return LoadResult(records, rows_read, dict(bad), fmt)


def select_rows(table: Table, columns: list[str] | None, weight: float | None, seed: int) -> Table:
    """A mixture source's share of ``table``: only ``columns`` (each must be present), and ``weight`` of the rows
    (a seeded subset in file order, as the handbook's shuffled select keeps a fraction of each dataset)."""
    rows, numbers = table.rows, list(range(len(table.rows)))
    if weight is not None and weight < 1:
        numbers = sorted(random.Random(f"mixture-{seed}-{table.source}").sample(numbers, round(weight * len(rows))))
    if columns is not None:
        for i in numbers:
            missing = [c for c in columns if not isinstance(rows[i], dict) or c not in rows[i]]
            if missing:
                raise CurryError(f"{table.source} row {table.line_of(i)}: no column {missing[0]!r} (data.mixture "
                                 f"columns: {', '.join(columns)})")
        rows = [{c: r[c] for c in columns} for r in rows]
    return Table(table.source, [rows[i] for i in numbers], lambda j: table.line_of(numbers[j]))


MIXTURE_KEYS = ("path", "subset", "split", "columns", "weight")


def check_mixture(sources: list[dict]) -> None:
    """``data.mixture``: a non-empty list of {path, subset, split, columns, weight}, each key checked."""
    if not sources:
        raise CurryError("config key 'data.mixture': an empty list; give at least one {path, split} source")
    for i, src in enumerate(sources):
        key = f"data.mixture[{i}]"
        unknown = [k for k in src if k not in MIXTURE_KEYS]
        if unknown:
            raise CurryError(f"config key '{key}.{unknown[0]}' is unknown; keys: {', '.join(MIXTURE_KEYS)}")
        if not isinstance(src.get("path"), str) or not src["path"]:
            raise CurryError(f"config key '{key}.path': give a file, directory or hub dataset, got {src.get('path')!r}")
        cols = src.get("columns")
        if cols is not None and (not isinstance(cols, list) or not all(isinstance(c, str) for c in cols)):
            raise CurryError(f"config key '{key}.columns': expected a list of column names, got {cols!r}")
        w = src.get("weight")
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1):
            raise CurryError(f"config key '{key}.weight' must be a fraction of the source in (0, 1], got {w!r}")


def load_mixture(sources: list[dict], format: str = "auto", *, seed: int = 0, **kwargs) -> LoadResult:
    """Several sources read one after another (`load_records` each: its split, columns and weight) into one
    list of records. A local directory holding a file named after the split (``train_prefs.jsonl``) stands
    for that split, as a Hub dataset's split would."""
    check_mixture(sources)
    records, rows_read, bad, formats = [], 0, Counter(), []
    for k, src in enumerate(sources):
        path, split = src["path"], src.get("split", "train")
        local = Path(os.path.expanduser(path))
        if local.is_dir():
            named = sorted(p for p in local.iterdir() if p.is_file() and _suffix(p) and p.name.split(".")[0] == split)
            path = str(named[0]) if named else path
        res = load_records(path, format, split=split, subset=src.get("subset"), columns=src.get("columns"),
                           weight=src.get("weight"), seed=seed, **kwargs)
        for rec in res.records:
            rec.id = f"{k}:{rec.id}" if len(sources) > 1 else rec.id  # ids are only unique per source
        records += res.records
        rows_read += res.rows_read
        bad.update(res.bad_rows)
        formats.append(res.format)
    return LoadResult(records, rows_read, dict(bad), formats[0] if len(set(formats)) == 1 else ",".join(formats))


def regroup(records: list[Record], source) -> list[Record]:
    """Pairwise rows sharing a prompt -> one ranked record (`formats.regroup_pairwise`), reported once."""
    n_rows = len(records)
    records, kept_apart = regroup_pairwise(records)
    merged = sum(len(r.meta.get("rows", ())) for r in records)
    if merged:
        print(f"currydpo: {source}: {merged} pairwise rows sharing a prompt regrouped into "
              f"{sum(1 for r in records if 'rows' in r.meta)} ranked records ({n_rows} rows -> {len(records)} "
              f"records), so each prompt's pairs form one curriculum", file=sys.stderr)
    if kept_apart:
        print(f"currydpo: warning: {source}: {kept_apart} prompt(s) have pairwise rows whose preferences do not "
              f"give one total order (a cycle, or responses never compared); their rows stay separate pairs",
              file=sys.stderr)
    return records
