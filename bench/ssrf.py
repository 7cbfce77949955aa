"""The SSRF table: hostile targets tried against chalicelib/outbound/fetcher.py, and what each got.

    .venv/bin/python -m bench.ssrf          (or: make bench BENCH=ssrf)

Three ways in: a URL given directly (no allow-list, as in production), a redirect from an
allowed site (a fake site on 127.0.0.1 with 127.0.0.1/32 allowed, as in the tests), and a
rebinding DNS answer. Made-up names go through a table resolver; numeric spellings and
`localhost` through the system's getaddrinfo. Every socket connect is recorded and any to an
address off this machine is refused before a packet leaves, so the last column shows what the
fetcher *tried*: it must stay empty. Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

from chalicelib.outbound import Fetcher
from tests.support.fake_site import FakeSite, local_connections_only

PUBLIC = "93.184.215.14"
NAMES = {
    "metadata.google.internal": ["169.254.169.254"],
    "private.example": ["10.1.2.3"],
    "mixed.example": ["10.0.0.1", "127.0.0.1"],
    "v6-metadata.example": ["fd00:ec2::254"],
    "public.example": [PUBLIC],
}
SYSTEM = {"localhost", "2130706433", "0x7f.1", "017700000001", "0x7f000001", "0x7f000002", "127.1", "0"}

DIRECT = [
    "http://127.0.0.1/", "http://localhost/", "http://2130706433/", "http://0x7f.1/", "http://017700000001/",
    "http://0x7f000001/", "http://127.1/", "http://0/", "http://0.0.0.0/", "http://10.0.0.1/",
    "http://172.16.0.1/", "http://192.168.1.1/", "http://100.64.0.1/", "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials", "http://224.0.0.1/", "http://240.0.0.1/", "http://255.255.255.255/",
    "http://198.18.0.1/", "http://192.0.2.1/", "http://[::1]/", "http://[::]/", "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/", "http://[fc00::1]/", "http://[fec0::1]/", "http://[ff02::1]/",
    "http://[fd00:ec2::254]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/", "http://[::127.0.0.1]/", "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:0a00:0001::]/", "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
    "http://metadata.google.internal/computeMetadata/v1/", "http://private.example/", "http://mixed.example/",
    "http://v6-metadata.example/", "http://public.example:8080/", "http://public.example:22/",
    "ftp://public.example/", "file:///etc/passwd", "gopher://public.example:70/_x", "http://user:pw@public.example/",
]
REDIRECTED = [
    "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:{port}/",
    "http://[::1]:{port}/", "http://[::ffff:127.0.0.1]:{port}/", "http://0x7f000002:{port}/",
    "http://metadata.google.internal/", "file:///etc/passwd", "(self, 4 times)", "(a chain of 4)",
]


def resolver(host, port, *args):
    if host in SYSTEM:
        return socket.getaddrinfo(host, port, *args)
    if host not in NAMES:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    out = []
    for address in NAMES[host]:
        family = socket.AF_INET if ipaddress.ip_address(address).version == 4 else socket.AF_INET6
        out.append((family, socket.SOCK_STREAM, 6, "", (address, port)))
    return out


def off_machine(attempts, before):
    return ", ".join(f"{a}:{p}" for a, p in attempts[before:]
                     if not ipaddress.ip_address(a.split("%")[0]).is_loopback) or "none"


def rows() -> list[tuple[str, str, str, str, str]]:
    table = []
    with local_connections_only() as attempts:
        production = Fetcher(resolver=resolver)
        for url in DIRECT:
            before = len(attempts)
            result = production.get_page(url)
            table.append((url, "direct", result.status, result.reason, off_machine(attempts, before)))

        with FakeSite() as site:
            tests = Fetcher(allow_networks=["127.0.0.1/32"], resolver=resolver)
            for target in REDIRECTED:
                before = len(attempts)
                if target == "(self, 4 times)":
                    url = site.url("/redirect/self")
                elif target == "(a chain of 4)":
                    url = site.url("/redirect/chain/4")
                else:
                    site.redirect("/go", target.format(port=site.port))
                    url = site.url("/go")
                result = tests.get_page(url)
                table.append((target.format(port=site.port), "302 from allowed site", result.status, result.reason,
                              off_machine(attempts, before)))

            answers = iter([["127.0.0.1"], ["10.0.0.1"]])

            def rebinding(host, port, *args):
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers)[0], port))]

            before = len(attempts)
            result = Fetcher(allow_networks=["127.0.0.1/32"], resolver=rebinding).get_page(
                site.url("/", host="rebind.example"))
            used = sorted({h.address for h in result.hops})
            table.append(("rebind.example (127.0.0.1, then 10.0.0.1)", "DNS rebinding", result.status,
                          f"connected to {', '.join(used)} only", off_machine(attempts, before)))

        answers2 = iter([[PUBLIC], ["127.0.0.1"]])

        def rebinding_public(host, port, *args):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers2)[0], port))]

        before = len(attempts)
        result = Fetcher(resolver=rebinding_public).get_page("http://rebind.example/")
        tried = [f"{a}:{p}" for a, p in attempts[before:]]
        table.append(("rebind.example (public, then 127.0.0.1)", "DNS rebinding", result.status,
                      f"tried {', '.join(tried)} only (refused by the bench's guard)", "none sent"))
    return table


def main() -> int:
    table = rows()
    print("| target | via | status | reason | connections off this machine |")
    print("|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    leaked = [row for row in table if row[4] not in ("none", "none sent")]
    fetched = [row for row in table if row[2] == "fetched" and row[1] != "DNS rebinding"]
    print(f"\n{len(table)} hostile targets: {len(fetched)} fetched, {len(leaked)} reached off this machine.")
    return 1 if leaked or fetched else 0


if __name__ == "__main__":
    sys.exit(main())
