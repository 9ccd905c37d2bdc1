"""`fastmta route`: the next hop for an address or domain, step by step, as delivery sees it.

The decision is the delivery worker's own: the same `Router` (local domains, transport
map, relay host, MX), the same resolver walk with its trace, the same own-address rule.
This module adds only what a person debugging mail needs around it: which domain an
address routes by, where this host stands among the MX hosts, an optional probe of each
candidate (fastmta.tools.probe), and a verdict with an exit status for scripts.

Verdicts: "routable" (exit 0: local delivery, discard, or candidates to try), "permanent"
(exit 1: the mail would bounce), "transient" (exit 75, EX_TEMPFAIL: it would be deferred;
also when `--probe` found that no candidate answers now).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from fastmta.config import Config
from fastmta.delivery.resolver import to_ascii_domain
from fastmta.delivery.routing import Route, Router, Transport
from fastmta.tools.options import own_addresses
from fastmta.tools.probe import ProbeResult, probe_all

__all__ = ["EXIT_PERMANENT", "EXIT_ROUTABLE", "EXIT_TRANSIENT", "RouteReport", "build_report"]

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

    @property
    def verdict(self) -> str:
        failure = self.route.failure
        if failure is not None:
            return "permanent" if failure.permanent else "transient"
        if self.probes and not any(probe.ok for probe in self.probes):
            return "transient"
        return "routable"

    @property
    def exit_status(self) -> int:
        return {"routable": EXIT_ROUTABLE, "permanent": EXIT_PERMANENT}.get(self.verdict,
                                                                             EXIT_TRANSIENT)

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
        if self.probes and not any(probe.ok for probe in self.probes):
            return ("transient: no candidate answers now; the mail would wait in the queue "
                    "and be retried")
        count = len(route.candidates)
        return f"routable: {count} address{'es' if count != 1 else ''} to try, in order"

    def lines(self) -> list[str]:
        """The text `fastmta route` prints."""
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
        if self.probes is not None:
            out.append("")
            if not self.probes:
                out.append("probe: nothing to connect to")
            for number, probe in enumerate(self.probes, 1):
                out.append(f"probe {number}: {probe.label}")
                out += [f"  {line}" for line in probe.transcript]
                out.append(f"  => accepts mail: {probe.summary()}")
            out.append("")
        out.append(self.summary())
        return out

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object."""
        return {
            "target": self.target,
            "address": self.address,
            "domain": self.route.domain,
            "verdict": self.verdict,
            "exit_status": self.exit_status,
            "summary": self.summary(),
            "hostname": self.hostname,
            "placement": self.placement,
            "self_preference": (self.route.resolution.self_preference
                                if self.route.resolution is not None else None),
            "route": self.route.to_dict(),
            "probes": None if self.probes is None else [p.to_dict() for p in self.probes],
        }


async def build_report(config: Config, target: str, *, probe: bool = False,
                       router: Router | None = None) -> RouteReport:
    """Route `target` (an address, a domain or an address literal) as delivery would."""
    text = target.strip()
    router = router or Router(config, own_addresses=own_addresses(config))
    if "@" in text:
        address: str | None = text.strip("<>")
        route = await router.route_address(text)
    else:
        address = None
        route = await router.route(text)
    probes = None
    if probe:
        probes = await probe_all(route.candidates, hostname=config.hostname,
                                 lmtp=route.transport is Transport.LMTP,
                                 timeout=config.connect_timeout)
    return RouteReport(text, address, route, config.hostname, _placement(route, config.hostname),
                       probes)


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
