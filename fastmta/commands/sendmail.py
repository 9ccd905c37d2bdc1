"""`fastmta sendmail [options] [recipients...]`: the sendmail-compatible way in for programs.

Reads one message on standard input.  Options are read up to the first recipient (as
Postfix's sendmail does); everything after it is a recipient.  Default: submit to the
running `fastmta serve` and exit 0 once it has queued the message.  -v: deliver now,
directly, printing the SMTP dialogue (Stevens, TCP/IP Illustrated vol. 1, ch. 28).

Exit status from sysexits.h: 0 done, 64 usage, 65 bad input, 67 no such user, 68 no such
domain, 69 refused, 70 internal error, 74 input error, 75 try again later (EX_TEMPFAIL),
78 bad configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

_IGNORED_O = "odb, odi, odq, oem, oee, oep, oeq, oew, om and the like are accepted and ignored"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sendmail",
        help="read a message on stdin and send it, like /usr/sbin/sendmail (-v: deliver now, "
        "showing the SMTP dialogue)",
        description="Read a message on standard input and submit it to the running `fastmta "
        "serve` (exit 0 once it is queued), or with -v deliver it now, directly, showing the "
        "next hop, every address tried, every command and reply, and a verdict per "
        "recipient.  Adds From, Date and Message-ID when missing; removes Bcc.",
        epilog="Options end at the first recipient.  Exit status (sysexits.h): 0 done, 64 "
        "usage, 65 bad message, 67 no such user, 68 no such domain, 69 refused, 75 not "
        "delivered or queued (try again), 78 bad configuration.",
    )
    parser.add_argument("-t", dest="extract", action="store_true",
                        help="also read recipients from To, Cc and Bcc (Resent-* if present)")
    parser.add_argument("-i", dest="ignore_dots", action="store_true",
                        help="a line with a single '.' does not end the message (also -oi)")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                        help=f"-oi is -i; {_IGNORED_O}")
    parser.add_argument("-f", "-r", dest="sender", metavar="SENDER",
                        help="envelope sender (<> for none) [default: your login name @ hostname]")
    parser.add_argument("-F", dest="full_name", metavar="NAME",
                        help="your full name, for the From field when the message has none")
    parser.add_argument("-v", dest="verbose", action="store_true",
                        help="deliver now, directly, and print the SMTP dialogue")
    parser.add_argument("-N", dest="notify", metavar="DSN",
                        help="delivery status notifications: never, or success,failure,delay")
    parser.add_argument("-R", dest="ret", metavar="RET", help="return full or hdrs in a bounce")
    parser.add_argument("-V", dest="envid", metavar="ENVID", help="envelope id for DSNs")
    parser.add_argument("-B", dest="body_type", metavar="TYPE",
                        help="accepted and ignored: 8-bit content is detected")
    parser.add_argument("-b", dest="mode", default="m", metavar="MODE",
                        help="only -bm (deliver mail, the default) is supported")
    parser.add_argument("-q", dest="queue_run", nargs="?", const="", metavar="TIME",
                        help="not supported: use `fastmta queue`")
    for flag in ("-U", "-G", "-m", "-n"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in ("-e", "-L"):
        parser.add_argument(flag, metavar="VALUE", help=argparse.SUPPRESS)
    parser.add_argument("-C", "--config", dest="config", metavar="FILE",
                        help="the TOML file `fastmta serve` uses (listen address, hostname, "
                        "routing)")
    parser.add_argument("recipients", nargs=argparse.REMAINDER, metavar="recipient",
                        help="addresses to send to; a bare name gets @hostname")
    _exit_with_usage_status(parser)
    parser.set_defaults(run=run)


def _exit_with_usage_status(parser: argparse.ArgumentParser) -> None:
    """sendmail callers expect EX_USAGE (64) for bad options, not argparse's 2, and an
    unknown option must fail here rather than be passed up to the `fastmta` parser."""
    original_parse = parser.parse_known_args

    def error(message: str) -> NoReturn:
        parser.print_usage(sys.stderr)
        parser.exit(os.EX_USAGE, f"fastmta sendmail: {message}; see `fastmta sendmail -h`\n")

    def parse_known_args(args: Any = None, namespace: Any = None) -> Any:
        parsed, extras = original_parse(args, namespace)
        if extras:
            error(f"unknown option {extras[0]!r}")
        return parsed, extras

    parser.error = error  # type: ignore[method-assign]
    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    from fastmta.tools.sendmail_main import run_sendmail

    return run_sendmail(args, sys.stdin.buffer, sys.stdout, sys.stderr)
