"""`fastmta loadgen HOST:PORT`: send SMTP load to a server and report what it took.

Output: a text report on stdout, or with `--json` one JSON object (for scripts such
as bench/compare.py).  A live progress line goes to stderr when it is a terminal, or
when `--progress` asks for it (then one line per update); before the run, a warning
goes there when too few messages leave some of the --connections nothing to send.
Exit status: 0 when every message got its 250 and nothing failed, 1 otherwise, 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from fastmta.config import parse_duration, parse_hostport, parse_size

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "loadgen",
        help="send SMTP load to a server and measure messages/s and latency",
        description="Open C concurrent SMTP sessions to HOST:PORT, send N messages of SIZE "
        "octets (K per connection), and report messages/s, MB/s, latency of the final 250 "
        "and every failure by SMTP reply code.  Exit status 1 if any message did not get "
        "its 250.",
    )
    parser.add_argument("target", metavar="HOST:PORT", help="the SMTP server to load")
    parser.add_argument("-c", "--connections", type=_positive_int, default=1, metavar="C",
                        help="concurrent sessions [default: 1]")
    parser.add_argument("-m", "--messages", type=_positive_int, default=None, metavar="N",
                        help="messages to send in all [default: 1000, or no limit with "
                        "--duration]")
    parser.add_argument("-s", "--size", type=_size, default=1024, metavar="BYTES",
                        help="size of each message, headers included, e.g. 1024, 100k "
                        "[default: 1024]")
    parser.add_argument("-k", "--per-connection", type=_positive_int, default=1, metavar="K",
                        help="messages per connection before QUIT and a new connection "
                        "[default: 1]")
    parser.add_argument("-r", "--recipients", type=_positive_int, default=1, metavar="R",
                        help="recipients per message [default: 1]")
    parser.add_argument("--pipelining", action=argparse.BooleanOptionalAction, default=True,
                        help="pipeline MAIL/RCPT/DATA when the server offers PIPELINING "
                        "[default: on]")
    parser.add_argument("--starttls", action="store_true",
                        help="upgrade every session with STARTTLS (certificate not verified)")
    parser.add_argument("-P", "--processes", type=_positive_int, default=1, metavar="P",
                        help="worker processes, each running C/P sessions [default: 1]")
    parser.add_argument("-d", "--duration", type=_seconds, default=None, metavar="S",
                        help="stop starting messages after S seconds (30, 2m)")
    parser.add_argument("--from", dest="sender", default="loadgen@example.com", metavar="ADDR",
                        help="envelope sender [default: loadgen@example.com]")
    parser.add_argument("--to", default="user{n}@example.test", metavar="ADDR",
                        help="recipients: an address, a comma list used in turn, or a "
                        "pattern where {n} becomes 1..R [default: user{n}@example.test]")
    parser.add_argument("--helo", default="loadgen.example.test", metavar="NAME",
                        help="name sent with EHLO [default: loadgen.example.test]")
    parser.add_argument("--timeout", type=_seconds, default=30.0, metavar="S",
                        help="give up on a connection silent this long [default: 30]")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout instead of the text report")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="live progress on stderr [default: only when it is a terminal]")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fastmta.loadgen import LoadSpec, run_load

    try:
        host, port = parse_hostport(args.target)
        messages = args.messages
        if messages is None and args.duration is None:
            messages = 1000
        spec = LoadSpec(
            host=host, port=port, connections=args.connections, messages=messages,
            size=args.size, per_connection=args.per_connection, recipients=args.recipients,
            pipelining=args.pipelining, starttls=args.starttls, processes=args.processes,
            duration=args.duration, sender=args.sender, to=args.to, helo=args.helo,
            timeout=args.timeout,
        )
        unused = spec.unused_connections()
        if unused:
            print(f"fastmta loadgen: {unused}", file=sys.stderr)
        show_progress = sys.stderr.isatty() if args.progress is None else args.progress
        progress = ProgressLine(sys.stderr) if show_progress else None
        report = run_load(spec, progress)
    except ValueError as exc:
        print(f"fastmta loadgen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if progress is not None:
        progress.finish()
    total = report.total
    if total.connect_errors and not total.connections:
        reasons = ", ".join(f"{reason} x{count}" for reason, count in total.connect_errors.items())
        print(f"fastmta loadgen: cannot connect to {args.target} ({reasons}); check that an "
              "SMTP server listens there", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=False))
    else:
        print(report.render())
    return EXIT_OK if report.all_accepted else EXIT_FAILED


class ProgressLine:
    """Rate, done/total and errors; redrawn in place on a terminal, one line per update
    otherwise (only when asked, so logs of scripted runs stay readable)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.in_place = stream.isatty()
        self._last_done = 0
        self._last_elapsed = 0.0

    def __call__(self, progress: Any) -> None:
        interval = progress.elapsed - self._last_elapsed
        rate = (progress.done - self._last_done) / interval if interval > 0 else 0.0
        self._last_done, self._last_elapsed = progress.done, progress.elapsed
        total = f"/{progress.total}" if progress.total is not None else ""
        text = (f"loadgen {progress.elapsed:6.1f}s  {progress.done}{total} msgs  "
                f"{rate:8.0f} msg/s  failed {progress.failed}  errors {progress.errors}")
        if self.in_place:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.in_place:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return value
