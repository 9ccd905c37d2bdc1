"""`fastmta queue`: the operator's view of the spool, like mailq, postqueue and postsuper.

    fastmta queue list [--json]        every message: id, queue, arrival, size, sender,
                                       recipients with state, next try, last error
    fastmta queue show ID [--json] [--no-content]
    fastmta queue flush [ID] [--no-wait] [--timeout S]   try deferred mail now, with progress
    fastmta queue hold ID | release ID | delete ID | delete --all
    fastmta queue stats [--json]       count and bytes per queue directory

The spool is found like `fastmta serve` finds it (`--spool`, or `spool` in `--config`).
Everything is safe while the server runs (fastmta.spool.admin explains why).  Exit status:
0 done, 1 the action failed (unknown id, message busy, no delivery worker for a flush),
2 configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from fastmta.config import ConfigError, load_config

EXIT_FAILED = 1
EXIT_CONFIG = 2


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "queue", help="list and manage queued mail (list, show, flush, hold, release, delete, stats)",
        description="Inspect and manage the mail queue; safe while fastmta serve runs.")
    parser.add_argument("--config", metavar="FILE", help="the TOML file fastmta serve uses")
    parser.add_argument("--spool", metavar="DIR", help="spool directory (overrides the config file)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list every queued message")
    listing.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    show = actions.add_parser("show", help="one message's envelope, state and content")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="the envelope and state as JSON")
    show.add_argument("--no-content", action="store_true", help="leave out the message content")
    flush = actions.add_parser("flush", help="make deferred mail due now and watch it being tried")
    flush.add_argument("id", nargs="?", help="only this message")
    flush.add_argument("--no-wait", action="store_true", help="return at once, without progress")
    flush.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="how long to watch the attempts [default: 60]")
    for name, text in (("hold", "put a message on hold: not delivered until released"),
                       ("release", "release a held message: it is tried now")):
        actions.add_parser(name, help=text).add_argument("id")
    delete = actions.add_parser("delete", help="delete a message (or every message) from the queue")
    target = delete.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?")
    target.add_argument("--all", action="store_true", help="every message not being delivered")
    stats = actions.add_parser("stats", help="messages and bytes per queue")
    stats.add_argument("--json", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fastmta.spool import QueueAdmin, Spool, SpoolError

    try:
        config = load_config(args.config, {"spool": args.spool})
    except ConfigError as exc:
        print(f"fastmta: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    root = config.spool
    if not (root / "incoming").is_dir():
        print(f"fastmta queue: there is no spool in {root}; give the --spool or --config that "
              "fastmta serve uses", file=sys.stderr)
        return EXIT_FAILED
    spool = Spool(root)
    try:
        admin = QueueAdmin(spool)
        return int(_ACTIONS[args.action](args, admin, sys.stdout))
    except SpoolError as exc:
        print(f"fastmta queue: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        spool.close()


# --- the actions ---------------------------------------------------------------------------


def _list(args: argparse.Namespace, admin: Any, out: TextIO) -> int:
    entries = admin.list()
    if args.json:
        json.dump([entry.to_dict() for entry in entries], out, indent=1)
        out.write("\n")
        return 0
    if not entries:
        out.write("The queue is empty.\n")
        return 0
    out.write(f"{'QUEUE ID':<20}  {'QUEUE':<8}  {'SIZE':>7}  {'ARRIVED':<19}  SENDER\n")
    for entry in entries:
        _write_entry(entry, out)
    total = sum(entry.size for entry in entries)
    out.write(f"-- {_plural(len(entries), 'message')}, {_size(total)} in total\n")
    return 0


def _show(args: argparse.Namespace, admin: Any, out: TextIO) -> int:
    entry = admin.show(args.id)
    if args.json:
        json.dump(entry.to_dict(), out, indent=1)
        out.write("\n")
        return 0
    _write_entry(entry, out)
    if entry.problem is not None or args.no_content:
        return 0
    _, message = admin.spool.open_message(entry.queue_id)
    with message:
        envelope = message.envelope
        params = " ".join(f"{k}={v}" if v is not None else k for k, v in envelope.mail_params.items())
        out.write(f"client: {envelope.client_address or '(generated here)'} helo={envelope.helo!r} "
                  f"protocol={envelope.protocol}{' ' + params if params else ''}\n\n")
        out.flush()
        for chunk in message.iter_body(verify=False):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    return 0


def _flush(args: argparse.Namespace, admin: Any, out: TextIO) -> int:
    from fastmta.delivery.worker import delivery_running

    spool = admin.spool
    if args.id is not None:
        watched = [admin.show(args.id).queue_id]
    else:
        watched = sorted(os.listdir(spool.deferred_dir))
    moved = admin.flush(args.id)
    if not delivery_running(spool.root):
        print(f"fastmta queue: no delivery worker is running on {spool.root_str}; "
              f"{_plural(moved, 'deferred message')} now due will be tried as soon as one "
              f"runs: start `fastmta serve` with this spool", file=sys.stderr)
        return EXIT_FAILED
    if moved == 0:
        due = len(os.listdir(spool.incoming_dir))
        out.write(f"Nothing deferred to flush; {_plural(due, 'message')} in incoming/ "
                  "already being tried.\n")
        return 0
    out.write(f"Flushed {_plural(moved, 'deferred message')}; the delivery workers try "
              f"{'it' if moved == 1 else 'them'} now.\n")
    if args.no_wait:
        return 0
    return _watch(admin, watched, args.timeout, out)


def _watch(admin: Any, watched: list[str], timeout: float, out: TextIO) -> int:
    """Show how the flushed messages fare until every one was tried or `timeout`."""
    spool = admin.spool
    tty = out.isatty()
    deadline = time.monotonic() + timeout
    shown = None
    while True:
        counts = {"waiting": 0, "done": 0, "deferred": 0, "held": 0}
        for queue_id in watched:
            where = _where(spool.root, queue_id)
            key = {"incoming": "waiting", "active": "waiting", "deferred": "deferred",
                   "hold": "held", None: "done"}.get(where, "held")
            counts[key] += 1
        line = (f"{counts['done']} delivered or bounced, {counts['deferred']} deferred again, "
                f"{counts['waiting']} being tried" + (f", {counts['held']} held" if counts["held"]
                                                      else ""))
        if line != shown:
            out.write(("\r" + line + "\x1b[K") if tty else line + "\n")
            out.flush()
            shown = line
        if not counts["waiting"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if tty:
        out.write("\n")
    if counts["deferred"]:
        out.write("`fastmta queue list` shows why deferred mail is waiting.\n")
    if counts["waiting"]:
        out.write(f"Stopped watching after {timeout:g} s; the attempts go on.\n")
    return 0


def _hold(args: argparse.Namespace, admin: Any, out: TextIO) -> int:
    was = admin.hold(args.id)
    out.write(f"{args.id.upper()}: on hold (was in {was}/); `fastmta queue release` sends it on\n"
              if was != "hold" else f"{args.id.upper()}: already on hold\n")
    return 0


def _release(args: argparse.Namespace, admin: Any, out: TextIO) -> int:
    admin.release(args.id)
    out.write(f"{args.id.upper()}: released; it is tried now\n")
    return 0


def _delete(args: argparse.Namespace, admin: Any, out: TextIO) -> int:
    if args.all:
        deleted, busy = admin.delete_all()
        out.write(f"Deleted {_plural(deleted, 'message')}.\n")
        if busy:
            out.write(f"{_plural(busy, 'message')} being delivered right now {'was' if busy == 1 else 'were'} "
                      "not deleted; run the command again when the attempts are over.\n")
        return 0
    was = admin.delete(args.id)
    out.write(f"{args.id.upper()}: deleted from {was}/\n")
    return 0


def _stats(args: argparse.Namespace, admin: Any, out: TextIO) -> int:
    stats = admin.stats()
    if args.json:
        json.dump({queue: {"count": s.count, "bytes": s.bytes} for queue, s in stats.items()},
                  out, indent=1)
        out.write("\n")
        return 0
    out.write(f"{'QUEUE':<10} {'MESSAGES':>8} {'SIZE':>9}\n")
    out.writelines(f"{queue:<10} {s.count:>8} {_size(s.bytes):>9}\n" for queue, s in stats.items())
    return 0


_ACTIONS = {"list": _list, "show": _show, "flush": _flush, "hold": _hold, "release": _release,
            "delete": _delete, "stats": _stats}


# --- formatting ----------------------------------------------------------------------------


def _write_entry(entry: Any, out: TextIO) -> None:
    from fastmta.delivery.dsn import AttemptError

    sender = "<>" if entry.sender == "" else f"<{entry.sender}>" if entry.sender is not None else "?"
    out.write(f"{entry.queue_id:<20}  {entry.queue:<8}  {_size(entry.size):>7}  "
              f"{_time(entry.arrival):<19}  {sender}\n")
    if entry.problem is not None:
        out.write(f"      cannot be read: {entry.problem}\n")
        return
    for rcpt in entry.recipients:
        state = rcpt.state.name.lower()
        tries = f", {_plural(rcpt.attempts, 'attempt')}" if rcpt.attempts else ""
        out.write(f"      <{rcpt.address}>: {state}{tries}\n")
        if rcpt.last_error and rcpt.state.name != "DELIVERED":
            out.write(f"          {AttemptError.parse(rcpt.last_error, rcpt.remote).describe()}\n")
    if entry.next_try is not None:
        out.write(f"      next try {_time(entry.next_try)}\n")
    if entry.delay_warned is not None:
        out.write(f"      delay warning sent {_time(entry.delay_warned)}\n")


def _time(moment: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)) if moment else "?"


def _size(size: int) -> str:
    """Bytes as 512, 1.5K, 12.0M."""
    if size < 1024:
        return str(size)
    value = float(size)
    for unit in ("K", "M", "G"):
        value /= 1024
        if value < 1024 or unit == "G":
            break
    return f"{value:.1f}{unit}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _where(root: Path, queue_id: str) -> str | None:
    for _ in range(2):  # a second look, in case it moved between two directories we checked
        for queue in ("incoming", "active", "deferred", "hold", "corrupt"):
            if os.path.lexists(root / queue / queue_id):
                return queue
    return None
