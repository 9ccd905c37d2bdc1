"""`fastmta sendmail`: submit a prepared message to the local server, or deliver it now (-v).

Submission (the default): one SMTP transaction with the running `fastmta serve`, at the
first `listen` address of the configuration, through the outbound client (SMTPPool).
A 250 after the data means the message is on disk in the server's queue (the server
answers only after fsync), so the command exits 0 then and not before.

Direct delivery (-v): route the recipients as a delivery worker would (Router), one group
per recipient domain, and deliver each group over SMTPPool as soon as its route is known,
with its transcript printed: the next hop and why (the DNS walk), each address tried, every
command (">>> ") and reply, and one verdict per recipient (with a hint when the sender can
do something about it, fastmta.tools.hints).  All domains are looked up at once but shown
and delivered in the order given, so the first dialogue never waits for the slowest
lookup.  Recipients not delivered now (deferred by the peer, unreachable, or local: local
delivery is the server's job, with its aliases and Maildirs) are submitted to the local
server for just those recipients, which queues and retries them.  When that fails
too they are reported as not delivered and the exit status is EX_TEMPFAIL: a recipient
is never dropped without a word.

Exit status (sysexits.h), worst first: EX_TEMPFAIL (75) when a recipient is neither
delivered nor queued; for a refused recipient EX_NOUSER (67, X.1.1), EX_NOHOST (68, no
such domain, null MX, no route) or EX_UNAVAILABLE (69, any other 5xx); else 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from fastmta.config import Config, parse_hostport
from fastmta.delivery.routing import Route, Router, Transport
from fastmta.delivery.smtp import ClientSettings, DeliveryStatus, RecipientResult, SMTPPool
from fastmta.protocol.address import split_mailbox
from fastmta.protocol.client import Transcript
from fastmta.tools.hints import failure_hint
from fastmta.tools.message_prep import PreparedMessage, Recipient
from fastmta.tools.options import own_addresses
from fastmta.tools.transcript import printer

__all__ = ["NO_SERVER_HINT", "Verdict", "deliver_now", "exit_status", "local_server", "submit"]

NO_SERVER_HINT = "is `fastmta serve` running? start it or use -v to deliver directly"
_NO_HOST_STATUSES = ("5.1.2", "5.1.10", "5.4.4")  # RFC 3463 / 7505: no such domain, null MX,
#                                                   unable to route


@dataclass(frozen=True)
class Verdict:
    """What became of one recipient, in the words `sendmail -v` prints after "rcpt... "."""

    recipient: str
    outcome: str  # sent, queued, discarded, bounced, deferred (deferred: not queued anywhere)
    text: str
    status: str = ""  # RFC 3463 code of a refusal
    hint: str = ""  # what the sender can do about it, when there is something

    def line(self) -> str:
        return f"{self.recipient}... {self.text}"

    def lines(self) -> list[str]:
        """The verdict line, then its hint on a line of its own."""
        return [self.line(), *([f"  hint: {self.hint}"] if self.hint else [])]


def exit_status(verdicts: Sequence[Verdict]) -> int:
    if any(v.outcome == "deferred" for v in verdicts):
        return os.EX_TEMPFAIL
    for verdict in verdicts:
        if verdict.outcome == "bounced":
            if verdict.status == "5.1.1":
                return os.EX_NOUSER
            if verdict.status in _NO_HOST_STATUSES:
                return os.EX_NOHOST
            return os.EX_UNAVAILABLE
    return os.EX_OK


def local_server(config: Config) -> tuple[str, str, int, None]:
    """The candidate (name, ip, port, preference) for the first `listen` address."""
    host, port = parse_hostport(config.listen[0])
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    if host in wildcard:
        return host or "localhost", wildcard[host], port, None
    try:
        return host, str(ipaddress.ip_address(host)), port, None
    except ValueError:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return host, str(found[0][4][0]), port, None


async def submit(config: Config, message: PreparedMessage, recipients: Sequence[Recipient],
                 transcript: Transcript | None = None) -> list[RecipientResult]:
    """Hand the message to the local server for `recipients`; one result each."""
    try:
        candidate = local_server(config)
    except OSError as exc:
        return [RecipientResult(r.address, DeliveryStatus.TRANSIENT, None, "4.4.1",
                                f"cannot resolve the listen address {config.listen[0]}: {exc}",
                                None, "connect", False) for r in recipients]
    async with SMTPPool(ClientSettings.from_config(config), transcript=transcript) as pool:
        return await pool.deliver([candidate], message.sender, recipients, message.content,
                                  mail_params=message.mail_params)


def server_unreachable(results: Sequence[RecipientResult]) -> bool:
    return bool(results) and all(r.stage == "connect" for r in results)


def submission_verdicts(results: Sequence[RecipientResult]) -> list[Verdict]:
    """Verdicts for the default mode: queued, refused by the server, or not queued."""
    verdicts = []
    for result in results:
        if result.status is DeliveryStatus.DELIVERED:
            verdicts.append(Verdict(result.recipient, "queued",
                                    f"Queued ({_reply(result)})"))
        elif result.status is DeliveryStatus.PERMANENT:
            verdicts.append(Verdict(result.recipient, "bounced",
                                    f"bounced: the local server refused it: {_reply(result)}",
                                    result.enhanced))
        else:
            verdicts.append(Verdict(result.recipient, "deferred",
                                    f"deferred: not queued: {result.describe()}"))
    return verdicts


@dataclass
class _Outcomes:
    """What -v has decided so far, recipient by recipient."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    leftover: dict[str, str] = field(default_factory=dict)  # why it goes to the local server
    hints: dict[str, str] = field(default_factory=dict)  # what to do about a routing failure


async def deliver_now(config: Config, message: PreparedMessage,
                      say: Callable[[str], None]) -> list[Verdict]:
    """-v: deliver directly, printing the dialogue; hand what is left to the local server."""
    by_address = {r.address: r for r in message.recipients}
    router = Router(config, own_addresses=own_addresses(config))
    by_domain: dict[str, list[Recipient]] = {}
    for recipient in message.recipients:
        domain = split_mailbox(recipient.address)[1].lower()
        by_domain.setdefault(domain, []).append(recipient)
    lookups = [asyncio.ensure_future(router.route(domain)) for domain in by_domain]
    outcomes = _Outcomes()
    transcript = printer(say)
    try:
        async with SMTPPool(ClientSettings.from_config(config), transcript=transcript) as pool:
            for group, lookup in zip(by_domain.values(), lookups):
                await _deliver_group(pool, await lookup, group, message, say, outcomes)
    finally:
        for lookup in lookups:  # after an error, leave no lookup running
            lookup.cancel()
    verdicts = outcomes.verdicts
    if outcomes.leftover:
        verdicts.update(await _queue_leftover(config, message, by_address, outcomes.leftover,
                                              say, transcript))
    return [replace(verdicts[a], hint=outcomes.hints.get(a, verdicts[a].hint))
            for a in by_address]


async def _deliver_group(pool: SMTPPool, route: Route, group: list[Recipient],
                         message: PreparedMessage, say: Callable[[str], None],
                         outcomes: _Outcomes) -> None:
    """Show the route of one domain's recipients, then deliver to them or say why not."""
    addresses = [r.address for r in group]
    say(f"{', '.join(addresses)}... next hop:")
    for line in route.describe():
        say(f"  {line}")
    failure = route.failure
    if failure is not None:
        hint = failure_hint(failure)
        for address in addresses:
            if hint is not None:
                outcomes.hints[address] = hint
            if failure.permanent:
                outcomes.verdicts[address] = Verdict(
                    address, "bounced", f"bounced: {failure.status} {failure.text}",
                    failure.status)
            else:
                outcomes.leftover[address] = f"{failure.status} {failure.text}"
        return
    if route.transport is Transport.LOCAL:
        outcomes.leftover.update(dict.fromkeys(addresses, "local delivery"))
        return
    if route.transport is Transport.DISCARD:
        for address in addresses:
            outcomes.verdicts[address] = Verdict(address, "discarded", f"discarded: {route.why}")
        return
    say(f"Connecting to {route.destination}...")
    results = await pool.deliver(route.candidates, message.sender, group, message.content,
                                 destination=route.destination,
                                 lmtp=route.transport is Transport.LMTP,
                                 mail_params=message.mail_params)
    for result in results:
        if result.status is DeliveryStatus.DELIVERED:
            outcomes.verdicts[result.recipient] = Verdict(result.recipient, "sent",
                                                          f"Sent ({_reply(result)})")
        elif result.status is DeliveryStatus.PERMANENT:
            outcomes.verdicts[result.recipient] = Verdict(result.recipient, "bounced",
                                                          f"bounced: {result.describe()}",
                                                          result.enhanced)
        else:
            outcomes.leftover[result.recipient] = result.describe()


async def _queue_leftover(config: Config, message: PreparedMessage,
                          by_address: dict[str, Recipient], leftover: dict[str, str],
                          say: Callable[[str], None], transcript: Transcript) -> dict[str, Verdict]:
    names = ", ".join(leftover)
    say(f"{names}... not delivered now: handing to the local server at {config.listen[0]}")
    results = await submit(config, message, [by_address[a] for a in leftover], transcript)
    unreachable = server_unreachable(results)
    verdicts = {}
    for result in results:
        why = leftover[result.recipient]
        local = why == "local delivery"
        if result.status is DeliveryStatus.DELIVERED:
            text = (f"handed to the local server for local delivery ({_reply(result)})" if local
                    else f"deferred: {why}; queued on the local server for retry "
                    f"({_reply(result)})")
            verdicts[result.recipient] = Verdict(result.recipient, "queued", text)
        elif result.status is DeliveryStatus.PERMANENT:
            verdicts[result.recipient] = Verdict(
                result.recipient, "bounced",
                f"bounced: {'' if local else why + '; '}the local server refused it: "
                f"{_reply(result)}", result.enhanced)
        else:
            problem = (f"no local server at {config.listen[0]} (is `fastmta serve` running? "
                       "start it, then send to this recipient again)" if unreachable
                       else f"the local server did not take it: {result.describe()}")
            head = ("not delivered (local delivery needs the server)" if local
                    else f"deferred: {why}")
            verdicts[result.recipient] = Verdict(result.recipient, "deferred",
                                                 f"{head}; NOT queued: {problem}")
    return verdicts


def _reply(result: RecipientResult) -> str:
    text = " ".join(result.text.split("\n"))
    code = f"{result.code} " if result.code is not None else ""
    enhanced = f"{result.enhanced} " if result.enhanced and result.remote else ""
    return f"{code}{enhanced}{text}"
