"""`currydpo` command line. Each subcommand lives in its own module with
``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CurryError
from ..lifetime import die_with_launcher

SUBCOMMANDS = ["pairs", "train", "eval", "compare", "demo", "report", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="currydpo",
        description="Curry-DPO: curriculum DPO over several ranked preference pairs per prompt.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}_cmd":
                continue  # subcommand not built yet
            raise
        p = mod.add_parser(sub)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
        p.set_defaults(_run=mod.run)
    return parser


def quiet_libraries() -> None:
    """Our own bars show progress; the per-file loading bars of transformers only add noise."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    quiet_libraries()
    die_with_launcher()  # a worker of torchrun / accelerate launch exits when its launcher is killed
    try:
        return int(args._run(args) or 0)
    except CurryError as e:
        if args.debug:
            raise
        print(f"currydpo {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # lifetime.Stopped: 128 + the signal, as the shell reports it
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PermissionError as e:  # a read-only directory: one line, as for any path the user can fix
        if args.debug:
            raise
        print(f"currydpo {args.command}: error: permission denied: {e.filename}; check its permissions (outputs "
              "need a directory you can write)", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - only a full disk is turned into a one-line error
        if args.debug or not disk_full(e):
            raise
        print(f"currydpo {args.command}: error: no space left on device ({e}). Checkpoints are written to a "
              "temporary path and renamed, so the last complete one is intact: free some space and run the "
              "same command again (train: with --resume; compare and demo resume by themselves)", file=sys.stderr)
        return 2


def disk_full(e: BaseException) -> bool:
    """An OSError for a full disk or quota, or a library's wrapped one (safetensors raises its own type)."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(e)


if __name__ == "__main__":
    sys.exit(main())
