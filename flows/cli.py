"""The ``vetset`` command line. Each command lives in its own module under
``flows/commands/`` and registers itself in :data:`COMMANDS`. Every command validates its
input first, so that a mistake gets one line on stderr and a non-zero exit, with nothing
written."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

from pipelines.errors import VetsetError
from pipelines.registry import Registry

EXIT_INTERNAL = 1
EXIT_LOST_SERVER = 3


def _lost_server(exc: BaseException) -> bool:
    """The Prefect API went away mid-run (connection refused / reset), not a vetset bug."""
    try:
        import httpx
    except ImportError:
        return False
    return isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError))

# Prefect's ephemeral server (no PREFECT_API_URL) gets 20 s to start by default; on a busy
# 2-core machine it took 13-18 s even when idle (../shared/ENVIRONMENT.md), so allow more.
# Set before prefect is imported; a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# vetset runs offline; the server's usage telemetry only adds a database write at start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@dataclass
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


COMMANDS: Registry[Command] = Registry("command")


def build_parser() -> argparse.ArgumentParser:
    from . import commands  # noqa: F401  (registers the commands)

    p = argparse.ArgumentParser(prog="vetset", description="Find and neutralise poisoned and mislabelled images.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS.names_in_order():
        command = COMMANDS.get(name)
        sp = sub.add_parser(name, help=command.help)
        command.add_arguments(sp)
        sp.set_defaults(func=command.handler)
    return p


def run(argv: list[str] | None, handler: Callable[[argparse.Namespace], int] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if isinstance(getattr(args, "device", None), str):
            # a device this machine lacks (--device cuda without CUDA) fails here, in one line,
            # before any flow or Prefect server starts
            from trainers.accel import resolve_device

            resolve_device(args.device)
        return (handler or args.func)(args)
    except VetsetError as exc:
        print(f"vetset: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vetset: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal failure: one line unless --debug
        if args.debug or os.environ.get("VETSET_DEBUG"):
            raise
        if _lost_server(exc):
            print(f"vetset: error: lost the Prefect server at {os.environ.get('PREFECT_API_URL', '(ephemeral)')} "
                  f"({type(exc).__name__}: {' '.join(str(exc).split())}); finished shards are kept in the cache: "
                  "rerun the same command to resume", file=sys.stderr)
            return EXIT_LOST_SERVER
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"vetset: internal error: {type(exc).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def main() -> None:
    code = run(sys.argv[1:])
    if code == EXIT_LOST_SERVER:
        # Prefect's exit handlers would go on trying to hand events and logs to the server that
        # is gone (seen: the process still alive minutes after the message); nothing is left to save
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
