"""Which addresses an outbound request may reach: public ones on ports 80 and 443, plus an
allow-list (OUTBOUND_ALLOW_NETWORKS) for tests, never the cloud metadata service. Pure: the
fetcher resolves a name once and asks :class:`AddressPolicy` about every address it got.

A refusal says what kind of address it was (loopback, private, cloud metadata, ...) and never
which one: the reason reaches a row's `context_status`, a webhook's last error and logs a tenant
may see, and the address a name resolved to inside our network is ours to keep."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

PUBLIC_PORTS = frozenset({80, 443})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_v4 = ipaddress.IPv4Network
_v6 = ipaddress.IPv6Network
# Always refused, even inside an allow-list: AWS (IPv4 and IPv6, also ECS task metadata), GCP and
# Azure share 169.254.169.254; Alibaba and Oracle use their own.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23",
    "100.100.100.200", "192.0.0.192",
))
# Named ranges, checked in order for a precise reason; anything else not global is refused too.
_NAMED_RANGES: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    ("shared address space (CGNAT)", (_v4("100.64.0.0/10"),)),
    ("benchmarking", (_v4("198.18.0.0/15"), _v6("2001:2::/48"))),
    ("documentation", (_v4("192.0.2.0/24"), _v4("198.51.100.0/24"), _v4("203.0.113.0/24"),
                       _v6("2001:db8::/32"), _v6("3fff::/20"))),
    ("IPv6 site-local", (_v6("fec0::/10"),)),
    ("local-use NAT64", (_v6("64:ff9b:1::/48"),)),
    ("IETF protocol assignments", (_v4("192.0.0.0/24"), _v6("2001::/23"))),
)
_NAT64 = _v6("64:ff9b::/96")
_IPV4_COMPATIBLE = _v6("::/96")




def parse_networks(networks: Sequence[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(n if not isinstance(n, str) else ipaddress.ip_network(n.strip(), strict=False) for n in networks)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 one carries, and the form: IPv4-mapped (::ffff:a.b.c.d), NAT64
    (64:ff9b::/96), 6to4 (2002::/16), Teredo (2001::/32) or IPv4-compatible (::a.b.c.d)."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip.teredo is not None:
        return "Teredo", ip.teredo[1]
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1
        return "IPv4-compatible", ipaddress.IPv4Address(int(ip))
    return None


def address_problem(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is ("loopback", "private", "cloud metadata",
    "IPv4-mapped private", ...), or None for a public address a request may go to. Never the
    address itself, nor the IPv4 address an IPv6 one carries.

    ``ipaddress``'s ``is_global`` is the base, with explicit checks where it is too generous
    (3.11 calls multicast, IPv6 site-local and the IPv4-embedding IPv6 forms global)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped IPv6 (link-local)"
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            form, v4 = embedded
            problem = address_problem(v4)
            if problem is not None:
                return f"{form} {problem}"
            if form in ("IPv4-mapped", "NAT64", "6to4"):
                return None  # a public IPv4 address, reached another way
            return form  # Teredo, or the deprecated IPv4-compatible form
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    for label, flag in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                        ("link-local", ip.is_link_local), ("multicast", ip.is_multicast)):
        if flag:
            return label
    for label, networks in _NAMED_RANGES:
        if any(ip in n for n in networks):
            return label
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses on ports 80/443, plus anything inside ``allow`` (any port)."""

    allow: tuple[IPNetwork, ...] = ()

    def allowed_network(self, ip: IPAddress) -> bool:
        return ip not in METADATA_ADDRESSES and any(ip.version == n.version and ip in n for n in self.allow)

    def problem(self, ip: IPAddress, port: int) -> str | None:
        """Why a connection to ``ip``:``port`` is refused ("loopback address", "port 8080: 80 and
        443 only"), or None. The reason names the kind of address, never the address."""
        if self.allowed_network(ip):
            return None
        problem = address_problem(ip)
        if problem is not None:
            return f"{problem} address"
        if port not in PUBLIC_PORTS:
            return f"port {port}: 80 and 443 only"
        return None
