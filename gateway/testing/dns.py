"""A small authoritative DNS server for tests (UDP and TCP on 127.0.0.1, any port).

Serves a fixed zone given as a dict, so MX routing, DKIM keys, SPF and DMARC can be tested
without the network::

    async with DnsServer({"example.com": {"MX": ["10 mx.example.com."]},
                          "mx.example.com": {"A": ["127.0.0.2"]}}) as dns:
        resolver_nameservers = [("127.0.0.1", dns.port)]

Names not in the zone answer NXDOMAIN; names with ``"SERVFAIL": True`` answer SERVFAIL;
names with ``"TIMEOUT": True`` never answer.
"""
from __future__ import annotations

import asyncio
import struct
from typing import Any, Mapping

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, zone: Mapping[str, Mapping[str, Any]], host: str = "127.0.0.1") -> None:
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}
        self.host = host
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        rtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rtype))
        entry = self.zone.get(name)
        if entry is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        if entry.get("TIMEOUT"):
            return None
        if entry.get("SERVFAIL"):
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        values = entry.get(rtype, [])
        if isinstance(values, str):
            values = [values]
        if values:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, question.rdtype)
            for value in values:
                if rtype == "TXT" and not value.startswith('"'):
                    # Split long strings into 255-byte chunks as DNS requires (RFC 1035 §3.3.14).
                    chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
                    value = " ".join('"' + c.replace('"', '\\"') + '"' for c in chunks)
                rrset.add(dns.rdata.from_text(dns.rdataclass.IN, question.rdtype, value), ttl=60)
            response.answer.append(rrset)
        return response.to_wire()

    async def __aenter__(self) -> "DnsServer":
        loop = asyncio.get_running_loop()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = server.answer(data)
                if reply is not None:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        for _ in range(50):
            # UDP and TCP must share one port number; the UDP one the OS picks may be taken for TCP.
            transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.host, 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._handle, self.host, port)
            except OSError:
                transport.close()
                continue
            self._udp, self.port = transport, port
            return self
        raise OSError("no free port for the test DNS server")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
            reply = self.answer(await reader.readexactly(length))
            if reply is not None:
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
