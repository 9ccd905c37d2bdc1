"""What to do about a failure, in one line, for `fastmta route` and `fastmta sendmail -v`.

The words are the README's ("When mail does not arrive"), so a person reads the same advice
in the terminal as in the documentation.  Routing failures are matched by their RFC 3463
status, which fastmta.delivery.resolver assigns once; a failure without a hint here (a
transport map `error:` entry, a loop, a misconfigured next hop) already says what to do in
its own text.
"""

from __future__ import annotations

from fastmta.delivery.resolver import (
    STATUS_DNS_TEMPORARY,
    STATUS_NO_DOMAIN,
    STATUS_NULL_MX,
    Failure,
)

__all__ = ["failure_hint", "no_answer_hint"]

_FAILURE_HINTS = {
    STATUS_NO_DOMAIN: "a typo in the address, or a domain that expired: ask the recipient "
                      "for an address that works",
    STATUS_NULL_MX: "the domain says it takes no mail at all: ask the recipient for an "
                    "address that works",
    STATUS_DNS_TEMPORARY: "the resolver is failing: check dns_nameservers / dns_timeout, or "
                          "that the resolver is reachable",
}


def failure_hint(failure: Failure) -> str | None:
    """The advice for a routing failure, or None when its text says enough."""
    return _FAILURE_HINTS.get(failure.status)


def no_answer_hint(port: int) -> str:
    """For a mail exchanger that does not answer (a connect or a reply timed out)."""
    return (f"outbound port {port} is often blocked by hosting providers: send through "
            'their smarthost with relay_host = "[smtp.provider.example]:587"; or the mail '
            "exchanger is down: the mail stays queued and is retried")
