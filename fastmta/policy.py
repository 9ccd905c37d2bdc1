"""Who we accept mail for: local domains and users, aliases, catch-all, relaying.

`RecipientPolicy` is built from plain values (or `from_config`) and answers the
protocol's questions (`check_recipient`, `verify`, `expand`); the delivery side
reuses `resolve_local` to turn a local address into mailboxes and remote
addresses.

Rules, in order, for RCPT (RFC 5321 3.6.2, 4.5.1):
1. Bare `postmaster` and postmaster@<local domain> are always accepted.
2. A local domain: accepted if the user exists ("*" in local_users means any),
   is an alias, or a catch-all is set; otherwise 550 5.1.1.
3. A relay domain: accepted from anyone.
4. Any other domain: accepted only from a client inside relay_networks;
   otherwise 554 5.7.1.

Invariant: no open relay.  The constructor's defaults relay for nobody, and it
refuses "*" as a domain and /0 as a relay network, which would make one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from fastmta.protocol import replies
from fastmta.protocol.address import parse_mailbox, split_mailbox, unquote_local_part
from fastmta.protocol.replies import Reply

if TYPE_CHECKING:
    from fastmta.config import Config

__all__ = ["MAX_ALIAS_DEPTH", "MAX_EXPANSION", "RecipientPolicy"]

MAX_ALIAS_DEPTH = 20  # nested alias levels followed before giving up (a loop guard)
MAX_EXPANSION = 1000  # addresses one local recipient may expand to
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_PLAIN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~.")


class _DomainSet:
    """Exact domains plus "*.example.com" entries that match every subdomain."""

    def __init__(self, domains: Iterable[str], setting: str) -> None:
        self.exact: set[str] = set()
        self.suffixes: list[str] = []
        for entry in domains:
            domain = entry.strip().lower().rstrip(".")
            if domain.startswith("*."):
                rest = domain[2:]
                if not rest or "*" in rest:
                    raise ValueError(f"{setting}: bad wildcard {entry!r}; write *.example.com")
                self.suffixes.append("." + rest)
            elif not domain or "*" in domain:
                raise ValueError(f"{setting}: {entry!r} is not a domain; '*' alone would accept "
                                 "every domain, list the domains instead")
            else:
                self.exact.add(domain)

    def __contains__(self, domain: str) -> bool:
        return domain in self.exact or any(domain.endswith(suffix) for suffix in self.suffixes)


class RecipientPolicy:
    """Recipient acceptance and local alias resolution."""

    def __init__(
        self,
        *,
        local_domains: Iterable[str] = ("localhost",),
        relay_domains: Iterable[str] = (),
        relay_networks: Iterable[str] = (),
        local_users: Iterable[str] = ("*",),
        aliases: Mapping[str, Sequence[str]] | None = None,
        catch_all: str | None = None,
        vrfy_enabled: bool = False,
        expn_enabled: bool = False,
    ) -> None:
        local_list = [domain.lower().rstrip(".") for domain in local_domains]
        self._local = _DomainSet(local_list, "local_domains")
        self._relay = _DomainSet(relay_domains, "relay_domains")
        self.primary_domain = next((d for d in local_list if not d.startswith("*")), "localhost")
        self._networks: list[_IPNetwork] = []
        for text in relay_networks:
            network = ipaddress.ip_network(text, strict=False)
            if network.prefixlen == 0:
                raise ValueError(f"relay_networks: {text!r} would let every client relay (an open "
                                 "relay); list only the networks of your own clients")
            self._networks.append(network)
        users = {user.lower() for user in local_users}
        self._any_user = "*" in users
        self._users = users - {"*"}
        self._aliases = {name.lower(): tuple(targets) for name, targets in (aliases or {}).items()}
        if catch_all is not None and "@" in catch_all and parse_mailbox(catch_all) is None:
            raise ValueError(f"catch_all: {catch_all!r} is not an address; write user@domain or "
                             "a local name")
        self.catch_all = catch_all
        self.vrfy_enabled = vrfy_enabled
        self.expn_enabled = expn_enabled
        self._relay_clients: dict[str, bool] = {}

    @classmethod
    def from_config(cls, config: Config,
                    aliases: Mapping[str, Sequence[str]] | None = None) -> RecipientPolicy:
        """The policy of a loaded Config; `aliases` from fastmta.aliases.load_aliases."""
        return cls(
            local_domains=config.local_domains,
            relay_domains=config.relay_domains,
            relay_networks=config.relay_networks,
            local_users=config.local_users,
            aliases=aliases,
            catch_all=config.catch_all,
            vrfy_enabled=config.vrfy,
            expn_enabled=config.expn,
        )

    # --- questions the protocol asks -----------------------------------------------

    def is_local(self, domain: str) -> bool:
        """Whether mail for `domain` is delivered here."""
        return domain.lower().rstrip(".") in self._local

    def is_relay_client(self, client_ip: str) -> bool:
        """Whether `client_ip` lies in relay_networks (IPv4-mapped IPv6 counts as IPv4)."""
        cached = self._relay_clients.get(client_ip)
        if cached is None:
            cached = self._in_networks(client_ip)
            if len(self._relay_clients) > 4096:
                self._relay_clients.clear()
            self._relay_clients[client_ip] = cached
        return cached

    def check_recipient(self, address: str, client_ip: str) -> Reply | None:
        """None to accept RCPT TO:<address> from `client_ip`, else the refusal."""
        local, domain = split_mailbox(address)
        if not domain:
            return None  # bare <postmaster>: RFC 5321 4.1.1.3 and 4.5.1
        domain = domain.lower()
        if domain in self._local:
            return None if self._accepts_local(local) else replies.UNKNOWN_USER
        if domain in self._relay or self.is_relay_client(client_ip):
            return None
        return replies.RELAY_DENIED

    def verify(self, address: str) -> Reply:
        """The answer to VRFY (RFC 5321 3.5.3): 252 unless enabled; then 250 or 550 for local users."""
        if not self.vrfy_enabled:
            return replies.VRFY_CANNOT
        mailbox = self._mailbox_argument(address)
        if mailbox is None:
            return replies.BAD_RECIPIENT_SYNTAX
        local, domain = split_mailbox(mailbox)
        if not self.is_local(domain):
            return replies.VRFY_CANNOT
        if self._user_exists(_name(local)):
            return Reply(250, "2.1.5", f"<{mailbox}>" if mailbox.isascii() else "Ok")
        return replies.UNKNOWN_USER

    def expand(self, name: str) -> Reply:
        """The answer to EXPN (RFC 5321 3.5.2): 502 unless enabled; then the alias's mailboxes."""
        if not self.expn_enabled:
            return replies.EXPN_DISABLED
        mailbox = self._mailbox_argument(name)
        if mailbox is None:
            return replies.BAD_RECIPIENT_SYNTAX
        local, domain = split_mailbox(mailbox)
        if not self.is_local(domain) or _name(local) not in self._aliases:
            return replies.UNKNOWN_USER
        targets = [t if t.isascii() else "(non-ASCII address)" for t in self.resolve_local(mailbox)]
        if not targets:
            return replies.UNKNOWN_USER
        return Reply(250, "2.1.5", "\n".join(f"<{target}>" for target in targets))

    # --- alias resolution (also used by delivery) ------------------------------------

    def resolve_local(self, address: str) -> list[str]:
        """Where mail to `address` goes: mailboxes at local domains and remote addresses.

        Aliases are followed recursively; each name is expanded once, so loops
        end; an alias naming itself ("root: root, admin") means its own mailbox,
        as in aliases(5).  An unknown local user goes to the catch-all, or
        nowhere (an empty list).  A non-local address is returned unchanged.
        """
        local, domain = split_mailbox(address)
        domain = domain.lower() if domain else self.primary_domain
        if domain not in self._local:
            return [address]
        result: list[str] = []
        self._expand(_name(local), domain, result, set(), 0)
        return result

    def _expand(self, name: str, domain: str, result: list[str], seen: set[str], depth: int) -> None:
        if name in seen or depth > MAX_ALIAS_DEPTH or len(result) >= MAX_EXPANSION:
            return
        seen.add(name)
        targets = self._aliases.get(name)
        if targets is None:
            if name == "postmaster" or self._user_exists(name):
                _add(result, _mailbox(name, domain))
            elif self.catch_all is not None:
                catch_local, catch_domain = split_mailbox(self.catch_all)
                catch_domain = catch_domain.lower() if catch_domain else domain
                catch_name = _name(catch_local)
                if catch_domain not in self._local:
                    _add(result, self.catch_all)
                elif catch_name in self._aliases:
                    self._expand(catch_name, catch_domain, result, seen, depth + 1)
                else:  # the operator named this mailbox: it exists by configuration
                    _add(result, _mailbox(catch_name, catch_domain))
            return
        for target in targets:
            target_local, target_domain = split_mailbox(target)
            if target_domain and target_domain.lower() not in self._local:
                _add(result, target)  # remote: delivered by SMTP
                continue
            target_name = _name(target_local)
            target_domain = target_domain.lower() if target_domain else domain
            if target_name == name:
                _add(result, _mailbox(name, target_domain))  # the alias's own mailbox
            else:
                self._expand(target_name, target_domain, result, seen, depth + 1)

    # --- helpers -------------------------------------------------------------------

    def _user_exists(self, name: str) -> bool:
        return self._any_user or name in self._users

    def _accepts_local(self, local: str) -> bool:
        name = _name(local)
        return (name == "postmaster" or self._user_exists(name) or name in self._aliases
                or self.catch_all is not None)

    def _in_networks(self, client_ip: str) -> bool:
        try:
            ip: _IPAddress = ipaddress.ip_address(client_ip.partition("%")[0])
        except ValueError:
            return False  # not an IP (e.g. a Unix socket peer): never trusted to relay
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks)

    def _mailbox_argument(self, text: str) -> str | None:
        """A VRFY/EXPN argument as a mailbox: "<a@b>", "a@b" or a local name."""
        text = text.strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1]
        if "@" not in text:
            text = f"{text}@{self.primary_domain}"
        return parse_mailbox(text)


def _name(local: str) -> str:
    """A local part as the key for users and aliases: unquoted, lower-case."""
    return unquote_local_part(local).lower()


def _mailbox(name: str, domain: str) -> str:
    """name@domain, quoting the name when it is not a plain dot-atom."""
    plain = name and set(name) <= _PLAIN_NAME_CHARS and ".." not in name \
        and not name.startswith(".") and not name.endswith(".")
    if not plain:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        name = f'"{escaped}"'
    return f"{name}@{domain}"


def _add(result: list[str], address: str) -> None:
    if address not in result and len(result) < MAX_EXPANSION:
        result.append(address)
