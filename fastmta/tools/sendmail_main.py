"""The body of `fastmta sendmail`: options -> configuration -> message -> submit or deliver.

Owns the mapping of sendmail's options onto fastmta.tools.message_prep and
fastmta.tools.sendmail, what is printed where (with -v everything goes to stdout, in
order, as the dialogue happens; otherwise only problems, on stderr), and the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import traceback
from collections.abc import Callable
from typing import BinaryIO, TextIO

from fastmta.commands.serve import config_from_args
from fastmta.config import ConfigError
from fastmta.tools.message_prep import MessageError, prepare_message, read_message
from fastmta.tools.sendmail import (
    NO_SERVER_HINT,
    Verdict,
    deliver_now,
    exit_status,
    server_unreachable,
    submission_verdicts,
    submit,
)

__all__ = ["run_sendmail"]

PROG = "fastmta sendmail"


def run_sendmail(args: argparse.Namespace, stdin: BinaryIO, stdout: TextIO,
                 stderr: TextIO) -> int:
    def complain(text: str) -> None:
        print(f"{PROG}: {text}", file=stderr, flush=True)

    refusal = _unsupported(args)
    if refusal is not None:
        complain(refusal)
        return os.EX_USAGE
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        complain(f"configuration error: {exc}")
        return os.EX_CONFIG
    recipients = list(args.recipients)
    if recipients[:1] == ["--"]:
        recipients.pop(0)
    uid = os.getuid()
    try:
        raw = read_message(stdin, ignore_dots=args.ignore_dots or "i" in args.options,
                           limit=config.max_message_size)
        message = prepare_message(raw, sender=args.sender, full_name=args.full_name,
                                  recipients=recipients, extract=args.extract,
                                  hostname=config.hostname, login=_login_name(uid), uid=uid,
                                  notify=args.notify, ret=args.ret, envid=args.envid)
    except MessageError as exc:
        complain(str(exc))
        return exc.status
    except OSError as exc:
        complain(f"cannot read the message from standard input: {exc}")
        return os.EX_IOERR
    try:
        if args.verbose:
            def say(line: str) -> None:
                print(line, file=stdout, flush=True)

            verdicts = asyncio.run(deliver_now(config, message, say))
            for verdict in verdicts:
                for line in verdict.lines():
                    say(line)
        else:
            results = asyncio.run(submit(config, message, message.recipients))
            if server_unreachable(results):
                complain(f"cannot submit to the local server at {config.listen[0]} "
                         f"({results[0].text}): {NO_SERVER_HINT}")
                return os.EX_TEMPFAIL
            verdicts = submission_verdicts(results)
            _report_problems(verdicts, complain)
    except Exception:  # noqa: BLE001 - a bug must say so, and never look like success
        traceback.print_exc(file=stderr)
        complain("internal error (the traceback above); the message was not sent: "
                 "please report it")
        return os.EX_SOFTWARE
    return exit_status(verdicts)


def _unsupported(args: argparse.Namespace) -> str | None:
    if args.mode != "m":
        return (f"-b{args.mode} is not supported: fastmta sendmail only sends mail (-bm); "
                "use `fastmta queue` for the queue and `fastmta route` to test an address")
    if args.queue_run is not None:
        return "-q is not supported: use `fastmta queue flush` to retry deferred mail now"
    return None


def _report_problems(verdicts: list[Verdict], complain: Callable[[str], None]) -> None:
    for verdict in verdicts:
        if verdict.outcome != "queued":
            for line in verdict.lines():
                complain(line)


def _login_name(uid: int) -> str:
    """The name of the user running us (Postfix does the same: the uid, not $USER)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return os.environ.get("LOGNAME") or os.environ.get("USER") or f"uid{uid}"
