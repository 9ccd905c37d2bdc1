"""Recipient policy: who we accept mail for, alias resolution, and no open relay anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastmta.aliases import load_aliases
from fastmta.config import load_config
from fastmta.policy import MAX_EXPANSION, RecipientPolicy
from fastmta.protocol import replies

OUTSIDE = "203.0.113.9"


def policy(**values: object) -> RecipientPolicy:
    base: dict[str, object] = {"local_domains": ["example.com", "*.corp.example"],
                               "relay_domains": ["relay.example"], "relay_networks": ["10.0.0.0/8",
                                                                                      "2001:db8::/32"],
                               "local_users": ["alice", "bob"]}
    base.update(values)
    return RecipientPolicy(**base)  # type: ignore[arg-type]


def decide(p: RecipientPolicy, address: str, ip: str = OUTSIDE) -> str:
    reply = p.check_recipient(address, ip)
    return "accept" if reply is None else f"{reply.code} {reply.enhanced}"


TABLE = [
    ("alice@example.com", OUTSIDE, "accept"),
    ("Alice@EXAMPLE.COM", OUTSIDE, "accept"),
    ('"alice"@example.com', OUTSIDE, "accept"),
    ("carol@example.com", OUTSIDE, "550 5.1.1"),
    ("carol@example.com", "10.0.0.1", "550 5.1.1"),  # relay rights do not invent local users
    ("postmaster@example.com", OUTSIDE, "accept"),
    ("POSTMASTER@eu.corp.example", OUTSIDE, "accept"),
    ("postmaster", OUTSIDE, "accept"),
    ("bob@eu.corp.example", OUTSIDE, "accept"),
    ("bob@corp.example", OUTSIDE, "554 5.7.1"),  # the wildcard covers subdomains only
    ("anyone@relay.example", OUTSIDE, "accept"),
    ("anyone@sub.relay.example", OUTSIDE, "554 5.7.1"),
    ("someone@elsewhere.example", OUTSIDE, "554 5.7.1"),
    ("someone@elsewhere.example", "10.20.30.40", "accept"),
    ("someone@elsewhere.example", "::ffff:10.1.1.1", "accept"),  # IPv4-mapped
    ("someone@elsewhere.example", "2001:db8::7", "accept"),
    ("someone@elsewhere.example", "2001:db9::7", "554 5.7.1"),
    ("someone@elsewhere.example", "not-an-ip", "554 5.7.1"),
    ("someone@example.com.evil.example", OUTSIDE, "554 5.7.1"),
    ("user@[192.0.2.1]", OUTSIDE, "554 5.7.1"),
]


@pytest.mark.parametrize(("address", "ip", "expected"), TABLE)
def test_recipient_table(address: str, ip: str, expected: str) -> None:
    assert decide(policy(), address, ip) == expected


def test_no_open_relay_in_any_default() -> None:
    stranger = "someone@elsewhere.example"
    assert decide(RecipientPolicy(), stranger) == "554 5.7.1"
    assert decide(RecipientPolicy(), stranger, "127.0.0.1") == "554 5.7.1"
    config_policy = RecipientPolicy.from_config(load_config())
    assert decide(config_policy, stranger) == "554 5.7.1"
    assert decide(config_policy, stranger, "127.0.0.1") == "accept"  # the default relay network
    assert decide(config_policy, "anyone@localhost") == "accept"  # local_users defaults to "*"


def test_settings_that_would_open_the_relay_are_refused() -> None:
    with pytest.raises(ValueError, match="open relay"):
        policy(relay_networks=["0.0.0.0/0"])
    with pytest.raises(ValueError, match="open relay"):
        policy(relay_networks=["::/0"])
    with pytest.raises(ValueError, match="every domain"):
        policy(relay_domains=["*"])
    with pytest.raises(ValueError, match="wildcard"):
        policy(local_domains=["*.ex*ample.com"])


def test_aliases_and_catch_all() -> None:
    p = policy(aliases={"sales": ("alice", "partner@remote.example"), "info": ("sales",)})
    assert decide(p, "sales@example.com") == "accept"
    assert decide(p, "info@eu.corp.example") == "accept"
    assert decide(p, "nobody@example.com") == "550 5.1.1"
    assert decide(policy(catch_all="bob"), "nobody@example.com") == "accept"


def test_resolve_local_follows_aliases_recursively() -> None:
    p = policy(aliases={
        "info": ("sales", "support"),
        "sales": ("alice", "partner@remote.example", "Alice@Example.com"),
        "support": ("bob", "info"),  # a loop back to info
        "root": ("root", "bob"),  # an alias naming itself means its own mailbox
        "ghost": ("nobody",),
        "a": ("b",), "b": ("a",),
    })
    assert p.resolve_local("info@example.com") == ["alice@example.com", "partner@remote.example",
                                                   "bob@example.com"]
    assert p.resolve_local("root@example.com") == ["root@example.com", "bob@example.com"]
    assert p.resolve_local("alice@example.com") == ["alice@example.com"]
    assert p.resolve_local("postmaster@example.com") == ["postmaster@example.com"]
    assert p.resolve_local("ghost@example.com") == []
    assert p.resolve_local("a@example.com") == []  # a pure loop delivers nowhere, and ends
    assert p.resolve_local("x@remote.example") == ["x@remote.example"]
    assert p.resolve_local("sales") == ["alice@example.com", "partner@remote.example"]


def test_catch_all_resolution() -> None:
    p = policy(catch_all="sales", aliases={"sales": ("alice", "bob")})
    assert p.resolve_local("whoever@example.com") == ["alice@example.com", "bob@example.com"]
    assert policy(catch_all="admin@remote.example").resolve_local("x@example.com") == \
        ["admin@remote.example"]
    assert policy(catch_all="keeper").resolve_local("x@example.com") == ["keeper@example.com"]


def test_expansion_is_bounded() -> None:
    many = {f"l{i}": tuple(f"u{i}-{j}@remote.example" for j in range(100)) for i in range(20)}
    many["all"] = tuple(many)
    assert len(policy(aliases=many).resolve_local("all@example.com")) == MAX_EXPANSION
    chain = {f"n{i}": (f"n{i + 1}",) for i in range(100)}
    assert policy(aliases=chain, local_users=["*"]).resolve_local("n0@example.com") == []


def test_verify_and_expand() -> None:
    p = policy(aliases={"staff": ("alice", "x@remote.example")}, vrfy_enabled=True,
               expn_enabled=True)
    assert str(p.verify("alice")) == "250 2.1.5 <alice@example.com>"
    assert str(p.verify("<bob@example.com>")) == "250 2.1.5 <bob@example.com>"
    assert p.verify("carol@example.com") is replies.UNKNOWN_USER
    assert p.verify("x@remote.example") is replies.VRFY_CANNOT
    assert p.verify("not an address") is replies.BAD_RECIPIENT_SYNTAX
    assert str(p.expand("staff")) == "250-2.1.5 <alice@example.com>\r\n250 2.1.5 <x@remote.example>"
    assert p.expand("alice") is replies.UNKNOWN_USER  # not a list
    assert policy().verify("alice") is replies.VRFY_CANNOT
    assert policy().expand("staff") is replies.EXPN_DISABLED


def test_from_config_with_an_aliases_file(tmp_path: Path) -> None:
    aliases_file = tmp_path / "aliases"
    aliases_file.write_text("team: alice, bob@example.org\n")
    config = load_config(overrides={"local_domains": "example.org", "local_users": "alice,bob",
                                    "relay_networks": "192.0.2.0/24", "vrfy": "true",
                                    "aliases_file": str(aliases_file)})
    p = RecipientPolicy.from_config(config, load_aliases(config.aliases_file))  # type: ignore[arg-type]
    assert decide(p, "team@example.org") == "accept"
    assert p.resolve_local("team@example.org") == ["alice@example.org", "bob@example.org"]
    assert decide(p, "x@elsewhere.example", "192.0.2.7") == "accept"
    assert decide(p, "x@elsewhere.example", "127.0.0.1") == "554 5.7.1"
    assert p.vrfy_enabled and not p.expn_enabled
