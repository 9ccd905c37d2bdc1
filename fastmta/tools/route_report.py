"""`fastmta route`: the next hop for an address or domain, step by step, as delivery sees it.

The decision is the delivery worker's own: the same `Router` (local domains, transport
map, relay host, MX), the same resolver walk with its trace, the same own-address rule.
This module adds only what a person debugging mail needs around it: which domain an
address routes by, where this host stands among the MX hosts, an optional probe of each
candidate (fastmta.tools.probe), and a verdict with an exit status for scripts.

Verdicts: "routable" (exit 0: local delivery, discard, or candidates to try), "permanent"
(exit 1: the mail would bounce), "transient" (exit 75, EX_TEMPFAIL: it would be deferred;
also when `--probe` found that no candidate answers now).  A verdict a person can do
something about is followed by a hint (fastmta.tools.hints), and so is a probe that timed out.

The text can be shown as it becomes known (`build_report(..., show=...)`): the rule and the
DNS walk as soon as routing is done, then each probe when it ends, in the order they end (a
host that never greets holds up only its own block), then the verdict.  `RouteReport.lines()`
is the same text with the probes in the candidates' order.  `target_problem` refuses what is
neither an address nor a domain before anything is looked up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastmta.config import Config
from fastmta.delivery.resolver import to_ascii_domain
from fastmta.delivery.routing import Route, Router, Transport
from fastmta.protocol.address import PathError, parse_mailbox, parse_rcpt_argument
from fastmta.tools.hints import failure_hint, no_answer_hint
from fastmta.tools.options import own_addresses
from fastmta.tools.probe import ProbeResult, probe_all

__all__ = ["EXIT_PERMANENT", "EXIT_ROUTABLE", "EXIT_TRANSIENT", "RouteReport", "build_report",
           "target_problem"]

EXIT_ROUTABLE = 0
EXIT_PERMANENT = 1
EXIT_TRANSIENT = os.EX_TEMPFAIL  # 75, sysexits.h


@dataclass
class RouteReport:
    target: str  # as the user typed it
    address: str | None  # the address, when one was given
    route: Route
    hostname: str  # our own name, as delivery compares it with MX hosts
    placement: str | None  # where this host stands among the MX hosts, in words
    probes: list[ProbeResult] | None  # None: not asked for
    probe_timeout: float = 30.0  # connect_timeout: the longest wait of each probe step

    @property
    def verdict(self) -> str:
        failure = self.route.failure
        if failure is not None:
            return "permanent" if failure.permanent else "transient"
        if self._nobody_answers:
            return "transient"
        return "routable"

    @property
    def exit_status(self) -> int:
        return {"routable": EXIT_ROUTABLE, "permanent": EXIT_PERMANENT}.get(self.verdict,
                                                                             EXIT_TRANSIENT)

    @property
    def _nobody_answers(self) -> bool:
        return bool(self.probes) and not any(probe.ok for probe in self.probes or ())

    def summary(self) -> str:
        route = self.route
        if route.failure is not None:
            what = ("the mail would bounce" if route.failure.permanent
                    else "the mail would wait in the queue and be retried")
            return f"{self.verdict}: {route.failure.status} {route.failure.text}; {what}"
        if route.transport is Transport.LOCAL:
            return "routable: delivered on this host (local_domains)"
        if route.transport is Transport.DISCARD:
            return "routable: accepted and thrown away (discard)"
        if self._nobody_answers:
            return ("transient: no candidate answers now; the mail would wait in the queue "
                    "and be retried")
        count = len(route.candidates)
        return f"routable: {count} address{'es' if count != 1 else ''} to try, in order"

    @property
    def hint(self) -> str | None:
        """What to do about the verdict, when there is something to do."""
        if self.route.failure is not None:
            return failure_hint(self.route.failure)
        if self._nobody_answers:
            return no_answer_hint(self.route.candidates[0].port)
        return None

    def walk_lines(self) -> list[str]:
        """The rule that applied, the DNS walk, our place among the MX hosts, the "=> try"
        lines: everything known once routing is done."""
        out = []
        if self.address is not None:
            out.append(f"{self.address}: routed by its domain, {self.route.domain or '(none)'}")
        described = self.route.describe()
        # the walk, then our place among the MX hosts, then the "=> try" lines
        split = next((i for i, line in enumerate(described) if line.startswith("=>")),
                     len(described))
        out += described[:split]
        if self.placement is not None:
            out.append(f";; {self.placement}")
        out += described[split:]
        return out

    def probing_lines(self) -> list[str]:
        """Said before the probes start (nothing when none were asked for)."""
        if self.probes is None:
            return []
        count = len(self.route.candidates)
        if not count:
            return ["", "probe: nothing to connect to"]
        plural = "es" if count != 1 else ""
        return ["", (f"probing {count} address{plural} at once (EHLO and QUIT only; each "
                     f"step waits up to connect_timeout, {self.probe_timeout:g} s)")]

    @staticmethod
    def probe_lines(number: int, probe: ProbeResult) -> list[str]:
        """One probe's block; `number` is its candidate's place in the "=> try" list."""
        out = [f"probe {number}: {probe.label}"]
        out += [f"  {line}" for line in probe.transcript]
        out.append(f"  => accepts mail: {probe.summary()}")
        if probe.hint is not None:
            out.append(f"  hint: {probe.hint}")
        return out

    def end_lines(self) -> list[str]:
        """The verdict, and its hint."""
        out = [""] if self.probes is not None else []
        out.append(self.summary())
        if self.hint is not None:
            out.append(f"hint: {self.hint}")
        return out

    def lines(self) -> list[str]:
        """The text `fastmta route` prints (the probes in the candidates' order)."""
        out = self.walk_lines() + self.probing_lines()
        for number, probe in enumerate(self.probes or (), 1):
            out += self.probe_lines(number, probe)
        return out + self.end_lines()

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object."""
        return {
            "target": self.target,
            "address": self.address,
            "domain": self.route.domain,
            "verdict": self.verdict,
            "exit_status": self.exit_status,
            "summary": self.summary(),
            "hint": self.hint,
            "hostname": self.hostname,
            "placement": self.placement,
            "self_preference": (self.route.resolution.self_preference
                                if self.route.resolution is not None else None),
            "route": self.route.to_dict(),
            "probes": None if self.probes is None else [p.to_dict() for p in self.probes],
        }


def target_problem(target: str) -> str | None:
    """Why `target` is neither an address (user@domain, <user@domain>) nor a domain or an
    address literal; None when it is one.  Addresses are checked by the SMTP server's own
    RCPT TO parser, domains by the resolver's normaliser."""
    text = target.strip()
    if not text:
        return "no address or domain given"
    if "@" in text:
        try:  # in brackets, so that a quoted user part may hold a space
            _, params = parse_rcpt_argument(text if text.startswith("<") else f"<{text}>")
        except PathError:
            return f"{text!r} is not an address: {_address_problem(text)}"
        if params:
            return f"{text!r}: give the address alone, without RCPT TO parameters"
        return None
    if any(char.isspace() for char in text):
        return f"{text!r} contains a space, which no domain does"
    if text.startswith("["):  # an address literal: valid where an address may hold it
        if parse_mailbox(f"postmaster@{text}") is None:
            return f"{text!r} is not an address literal, [192.0.2.1] or [IPv6:2001:db8::1]"
        return None
    try:
        to_ascii_domain(text)
    except ValueError as exc:
        return str(exc)
    return None


def _address_problem(text: str) -> str:
    """Which part of a refused address is wrong, as far as can be told simply."""
    local, _, domain = text.strip("<>").rpartition("@")
    if not domain:
        return "nothing after the @ (the domain is missing)"
    if not local:
        return "nothing before the @ (the user part is missing)"
    if any(char.isspace() for char in text):
        return 'it contains a space (a user part with a space is written "a b"@domain)'
    if not domain.startswith("["):
        try:
            to_ascii_domain(domain)
        except ValueError as exc:
            return str(exc)
    return "not user@domain as RFC 5321 4.1.2 allows"


async def build_report(config: Config, target: str, *, probe: bool = False,
                       router: Router | None = None,
                       show: Callable[[str], None] | None = None) -> RouteReport:
    """Route `target` (an address, a domain or an address literal) as delivery would.

    `show`, when given, gets the report's lines as soon as each is known (see the module
    docstring); the report is returned at the end either way."""
    text = target.strip()
    router = router or Router(config, own_addresses=own_addresses(config))
    if "@" in text:
        address: str | None = text.strip("<>")
        route = await router.route_address(text)
    else:
        address = None
        route = await router.route(text)
    report = RouteReport(text, address, route, config.hostname,
                         _placement(route, config.hostname), [] if probe else None,
                         config.connect_timeout)
    emit = show if show is not None else _ignore
    for line in report.walk_lines() + report.probing_lines():
        emit(line)
    if probe:
        done: dict[int, ProbeResult] = {}
        next_to_show = 0

        def shown(index: int, result: ProbeResult) -> None:
            # In the candidates' order (the order delivery tries them), each block as soon
            # as it and every block before it are known.
            nonlocal next_to_show
            done[index] = result
            while next_to_show in done:
                for line in report.probe_lines(next_to_show + 1, done.pop(next_to_show)):
                    emit(line)
                next_to_show += 1

        report.probes = await probe_all(route.candidates, hostname=config.hostname,
                                        lmtp=route.transport is Transport.LMTP,
                                        timeout=config.connect_timeout, on_done=shown)
    for line in report.end_lines():
        emit(line)
    return report


def _ignore(line: str) -> None:
    pass


def _placement(route: Route, hostname: str) -> str | None:
    """Our own hostname among the MX records of the looked-up domain (RFC 5321 5.1)."""
    resolution = route.resolution
    if resolution is None or resolution.mode != "mx":
        return None
    try:
        ours = to_ascii_domain(hostname)
    except ValueError:
        ours = hostname.lower()
    records = [(pref, host) for pref, host in resolution.mx_records if host]
    if resolution.implicit_mx or not records:
        return None
    mine = [pref for pref, host in records if host == ours]
    if resolution.self_preference is not None:
        preference = resolution.self_preference
        better = sorted({host for pref, host in records if pref < preference})
        where = (f"passes its mail on only to {', '.join(better)}" if better else
                 "is the best mail exchanger: mail for it must be delivered here")
        how = f"as {ours}" if mine else "by one of its addresses"
        return (f"this host ({how}) is a mail exchanger of {resolution.canonical} at "
                f"preference {preference}; it {where}")
    return f"this host ({ours}) is not among the mail exchangers of {resolution.canonical}"
