"""A tiny DNS server for tests: answers from records held in memory, over UDP and TCP on 127.0.0.1.

It behaves like a recursive resolver that knows every name it is given and nothing else:
- a name it holds answers with its records (authoritative, TTLs as given), CNAMEs chased within
  the data, so one response carries the whole chain, as a real resolver's does;
- a name it does not hold gets NXDOMAIN; a held name without the asked type gets NOERROR with an
  empty answer (NODATA); both carry a root SOA whose MINIMUM is the negative-caching TTL
  (RFC 2308 5), so resolvers can cache them;
- `fail(name, "servfail" | "refused" | "timeout")` makes chosen names fail (a timeout is simply no
  answer), for transient-failure tests;
- UDP answers larger than the client's buffer (512 bytes, or its EDNS size) come back truncated
  (TC bit) so the client retries over TCP on the same port (RFC 1035 4.2.1, RFC 7766).

Usage:

    from helpers.dns_server import DNSServer, dns_server   # the fixture, for pytest

    with DNSServer({"example.com": {"MX": ["10 mx1.example.com"], "A": "192.0.2.1"},
                    "mx1.example.com": {"A": "127.0.0.2", "AAAA": "::1"}}) as server:
        config = load_config(overrides={"dns_nameservers": server.nameserver})

Names in records may omit the final dot (everything is relative to the root). `server.queries`
lists what was asked, in order, to check caching.  Run `python -m helpers.dns_server ZONEFILE ORIGIN`
from tests/ to serve a zone file by hand (e.g. to try `fastmta route`).
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest

__all__ = ["DNSServer", "Query", "Records", "dns_server"]

Records = Mapping[str, Mapping[str, str | Iterable[str]]]  # name -> type -> rdata text(s)
FAILURE_MODES = ("servfail", "refused", "timeout")
_MAX_CHAIN = 8  # CNAME hops chased before giving up (a loop in the test data)


@dataclass(frozen=True)
class Query:
    """One question the server received."""

    name: str  # without the final dot, lower case
    rdtype: str  # "MX", "A", ...
    transport: str  # "udp" or "tcp"


def _name(text: str | dns.name.Name) -> dns.name.Name:
    if isinstance(text, dns.name.Name):
        return text
    return dns.name.from_text(text, origin=dns.name.root)


class DNSServer:
    """In-memory DNS server on 127.0.0.1, one port for UDP and TCP; a context manager."""

    def __init__(self, records: Records | None = None, *, ttl: int = 300,
                 negative_ttl: int = 60, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.default_ttl = ttl
        self.negative_ttl = negative_ttl
        self._data: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        self._failures: dict[tuple[dns.name.Name, int | None], str] = {}
        self._queries: list[Query] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._connections: set[socket.socket] = set()
        self._errors: list[Exception] = []
        for owner, types in (records or {}).items():
            for rdtype, values in types.items():
                self.add(owner, rdtype, values)

    # --- the data ------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, values: str | Iterable[str], ttl: int | None = None) -> None:
        """Add records, e.g. add("example.com", "MX", ["10 mx1", "20 mx2"]); rdata in zone-file text."""
        owner = _name(name)
        kind = dns.rdatatype.from_text(rdtype)
        items = [values] if isinstance(values, str) else list(values)
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, kind)
        for text in items:
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, kind, text, origin=dns.name.root,
                                          relativize=False),
                      ttl if ttl is not None else self.default_ttl)
        with self._lock:
            node = self._data.setdefault(owner, {})
            if kind in node:
                node[kind].union_update(rrset)
            else:
                node[kind] = rrset

    def set(self, name: str, rdtype: str, values: str | Iterable[str], ttl: int | None = None) -> None:
        """Replace the records of one type at a name (an empty list removes them)."""
        owner, kind = _name(name), dns.rdatatype.from_text(rdtype)
        with self._lock:
            self._data.get(owner, {}).pop(kind, None)
        items = [values] if isinstance(values, str) else list(values)
        if items:
            self.add(name, rdtype, items, ttl)
        else:
            with self._lock:
                self._data.setdefault(owner, {})

    def remove(self, name: str) -> None:
        """Forget a name entirely: it answers NXDOMAIN from now on."""
        with self._lock:
            self._data.pop(_name(name), None)

    def load_zone(self, text: str, origin: str) -> None:
        """Add every record of a zone in master-file format (RFC 1035 5)."""
        zone = dns.zone.from_text(text, origin=_name(origin), relativize=False, check_origin=False)
        for owner, node in zone.nodes.items():
            for rdataset in node.rdatasets:
                self.add(owner.to_text(), dns.rdatatype.to_text(rdataset.rdtype),
                         [rdata.to_text() for rdata in rdataset], rdataset.ttl)

    def fail(self, name: str, mode: str = "servfail", rdtype: str | None = None) -> None:
        """Make queries for `name` (only type `rdtype`, if given) fail: servfail, refused or timeout."""
        if mode not in FAILURE_MODES:
            raise ValueError(f"failure mode must be one of {', '.join(FAILURE_MODES)}, got {mode!r}")
        kind = dns.rdatatype.from_text(rdtype) if rdtype else None
        with self._lock:
            self._failures[(_name(name), kind)] = mode

    def heal(self, name: str) -> None:
        """Undo every `fail` for `name`."""
        owner = _name(name)
        with self._lock:
            for key in [key for key in self._failures if key[0] == owner]:
                del self._failures[key]

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    def count(self, name: str, rdtype: str) -> int:
        """How many times (name, rdtype) was asked."""
        wanted = _name(name).to_text(omit_final_dot=True).lower()
        return sum(1 for q in self.queries if q.name == wanted and q.rdtype == rdtype.upper())

    def clear_queries(self) -> None:
        with self._lock:
            self._queries.clear()

    @property
    def nameserver(self) -> str:
        """The value for the `dns_nameservers` setting: "127.0.0.1:PORT"."""
        return f"{self.host}:{self.port}"

    # --- answering ------------------------------------------------------------------------

    def answer(self, wire: bytes, transport: str) -> dns.message.Message | None:
        """The response to one query, or None to stay silent (bad input or a chosen timeout)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        question = query.question[0]
        with self._lock:
            self._queries.append(Query(question.name.to_text(omit_final_dot=True).lower(),
                                       dns.rdatatype.to_text(question.rdtype), transport))
            owner = question.name
            for _ in range(_MAX_CHAIN):
                mode = (self._failures.get((owner, question.rdtype))
                        or self._failures.get((owner, None)))
                if mode == "timeout":
                    return None
                if mode is not None:
                    failed = dns.message.make_response(query)
                    failed.set_rcode(dns.rcode.SERVFAIL if mode == "servfail" else dns.rcode.REFUSED)
                    return failed
                node = self._data.get(owner)
                if node is None:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                    break
                if question.rdtype in node:
                    response.answer.append(node[question.rdtype])
                    return response
                cname = node.get(dns.rdatatype.CNAME)
                if cname is None or question.rdtype == dns.rdatatype.CNAME:
                    break  # NODATA
                response.answer.append(cname)
                owner = cname[0].target
            else:
                response.set_rcode(dns.rcode.SERVFAIL)  # a CNAME loop in the test data
                return response
        response.authority.append(self._negative_soa())
        return response

    def _negative_soa(self) -> dns.rrset.RRset:
        soa = f"ns.test. hostmaster.test. 1 3600 600 86400 {self.negative_ttl}"
        return dns.rrset.from_text(dns.name.root, self.negative_ttl, "IN", "SOA", soa)

    # --- sockets and the thread ------------------------------------------------------------

    def start(self) -> Self:
        for _ in range(50):  # UDP and TCP must share a port; retry if TCP's is taken
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            break
        else:
            raise RuntimeError("no free port with both UDP and TCP on 127.0.0.1; is the host out of ports?")
        tcp.listen(16)
        self._udp, self._tcp, self.port = udp, tcp, udp.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name=f"dns-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            connections = list(self._connections)
        for sock in [*connections, self._udp, self._tcp, self._wake_r, self._wake_w]:
            if sock is not None:
                sock.close()
        if self._errors:
            raise RuntimeError(f"the test DNS server failed while answering: {self._errors[0]!r}; "
                               "fix the records given to it") from self._errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None
        selector = selectors.DefaultSelector()
        selector.register(self._udp, selectors.EVENT_READ, "udp")
        selector.register(self._tcp, selectors.EVENT_READ, "tcp")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        with selector:
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    try:
                        if key.data == "udp":
                            self._serve_udp()
                        elif key.data == "tcp":
                            self._accept_tcp()
                    except Exception as exc:  # noqa: BLE001 - keep serving; stop() reports it
                        self._errors.append(exc)

    def _accept_tcp(self) -> None:
        assert self._tcp is not None
        conn, _ = self._tcp.accept()
        with self._lock:
            self._connections.add(conn)
        threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()

    def _serve_udp(self) -> None:
        assert self._udp is not None
        wire, peer = self._udp.recvfrom(65535)
        response = self.answer(wire, "udp")
        if response is None:
            return
        # The client's buffer: 512 bytes without EDNS (RFC 1035 4.2.1), else its advertised size.
        limit = max(512, response.request_payload) if response.edns >= 0 else 512
        try:
            data = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(dns.message.from_wire(wire))
            truncated.flags |= dns.flags.TC | dns.flags.AA
            data = truncated.to_wire()
        self._udp.sendto(data, peer)

    def _serve_tcp(self, conn: socket.socket) -> None:
        try:
            with conn:
                while True:
                    header = _recv_exactly(conn, 2)
                    if header is None:
                        return
                    wire = _recv_exactly(conn, struct.unpack("!H", header)[0])
                    if wire is None:
                        return
                    response = self.answer(wire, "tcp")
                    if response is not None:  # a chosen timeout: keep the connection, say nothing
                        data = response.to_wire()
                        conn.sendall(struct.pack("!H", len(data)) + data)
        except OSError:
            return  # the client went away, or stop() closed the socket
        except Exception as exc:  # noqa: BLE001 - stop() reports it so the test fails
            self._errors.append(exc)
        finally:
            with self._lock:
                self._connections.discard(conn)


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    """An empty, running DNSServer; add records with `dns_server.add(...)`."""
    with DNSServer() as server:
        yield server


if __name__ == "__main__":  # serve a zone file by hand, e.g. for `fastmta route`
    import sys
    import time

    if len(sys.argv) != 3:
        sys.exit("usage: python -m helpers.dns_server ZONEFILE ORIGIN")
    with open(sys.argv[1], encoding="utf-8") as handle, DNSServer() as manual:
        manual.load_zone(handle.read(), sys.argv[2])
        print(f"serving {sys.argv[1]} on {manual.nameserver} (udp+tcp); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
