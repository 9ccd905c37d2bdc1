"""The `fastmta` command: parses arguments and hands off to one subcommand module.

Each subcommand lives in `fastmta/commands/<name>.py` and provides
`add_parser(subparsers)` (declares its flags) and `run(args) -> int` (does the work,
importing anything heavy only there, so `fastmta sendmail` starts fast).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fastmta import __version__

COMMANDS = ("serve", "queue", "loadgen", "route", "sendmail")


def version_text() -> str:
    from fastmta import kernels

    return f"fastmta {__version__} (kernels: {kernels.BACKEND})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastmta",
        description="A fast, durable SMTP mail transfer agent.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and kernel backend, then exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"fastmta.commands.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def sendmail_main() -> int:
    """`fastmta-sendmail`: the same as `fastmta sendmail`, for a /usr/sbin/sendmail symlink."""
    return main(["sendmail", *sys.argv[1:]])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
