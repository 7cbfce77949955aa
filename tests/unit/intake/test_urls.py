"""normalize_url: what is accepted, how it is written, and every class of rejection."""

from __future__ import annotations

import pytest

from chalicelib.intake.urls import MAX_URL_LENGTH, InvalidUrl, looks_like_url, normalize_url

ACCEPTED = [
    ("Acme.com", "https://acme.com/"),
    ("  www.acme.com/about?x=1#top \t", "https://www.acme.com/about?x=1"),
    ("HTTPS://WWW.ACME.COM/Path/To", "https://www.acme.com/Path/To"),
    ("http://acme.com", "http://acme.com/"),
    ("http://acme.com:80/x", "http://acme.com/x"),
    ("https://acme.com:443", "https://acme.com/"),
    ("https://acme.com:8443/x", "https://acme.com:8443/x"),
    ("acme.com:8080/x", "https://acme.com:8080/x"),
    ("//acme.com/x", "https://acme.com/x"),
    ("https://acme.com.", "https://acme.com/"),
    ("https://acme.com?", "https://acme.com/"),
    ("https://acme.com/a;b?c=d&e=f#g", "https://acme.com/a;b?c=d&e=f"),
    ('"acme.com"', "https://acme.com/"),
    ("<https://acme.com/x>", "https://acme.com/x"),
    ("sub.acme.co.uk", "https://sub.acme.co.uk/"),
    ("my-company.io", "https://my-company.io/"),
    ("linkedin.com/in/jane-doe", "https://linkedin.com/in/jane-doe"),
    ("bücher.de", "https://xn--bcher-kva.de/"),
    ("http://xn--bcher-kva.de/", "http://xn--bcher-kva.de/"),
    ("8.8.8.8", "https://8.8.8.8/"),
    ("http://[2606:4700:4700::1111]:8080/", "http://[2606:4700:4700::1111]:8080/"),
]

REJECTED = [
    # empty
    ("", "empty value"),
    ("   ", "empty value"),
    ('""', "empty value"),
    # garbage and spacing
    ("acme", "no domain"),
    ("Acme Inc", "contains spaces"),
    ("https://acme.com/a b", "contains spaces"),
    ("acme.com/\x00", "control characters"),
    ("acme.c0m", "not a valid host name"),
    ("-acme.com", "not a valid host name"),
    ("acme_corp.com", "not a valid host name"),
    ("a..com", "not a valid host name"),
    ("1.5e3", "not a valid host name"),
    ("http:acme.com", "missing host"),
    ("https://", "missing host"),
    ("http://[1.2.3.4]/", "not a valid URL"),
    # schemes
    ("javascript:alert(1)", "not an http(s) URL"),
    ("JavaScript://acme.com/%0aalert(1)", "not an http(s) URL"),
    ("ftp://acme.com/file", "not an http(s) URL"),
    ("mailto:bob@acme.com", "not an http(s) URL"),
    ("data:text/html,<b>x</b>", "not an http(s) URL"),
    ("file:///etc/passwd", "not an http(s) URL"),
    # credentials
    ("https://user:pass@acme.com/", "passwords"),
    ("bob@acme.com", "passwords"),
    ("https://acme.com@evil.com/", "passwords"),
    # ports
    ("http://acme.com:0/", "invalid port"),
    ("http://acme.com:99999/", "invalid port"),
    ("http://acme.com:http/", "invalid port"),
    # local names
    ("localhost", "local"),
    ("http://localhost:3000/", "local"),
    ("app.localhost", "local"),
    ("printer.local", "local"),
    ("db.internal", "local"),
    ("metadata.google.internal", "local"),
    ("nas.lan", "local"),
    ("router.home.arpa", "local"),
    ("ｌｏｃａｌｈｏｓｔ.ｌｏｃａｌ", "local"),  # full-width, NFKC-folded by IDNA
    # IPv4: private, loopback, link-local (metadata), shared, reserved, multicast, unspecified
    ("http://127.0.0.1/", "not a public IP"),
    ("http://10.1.2.3/", "not a public IP"),
    ("http://172.16.0.1/", "not a public IP"),
    ("http://192.168.1.1/", "not a public IP"),
    ("http://169.254.169.254/latest/meta-data/", "not a public IP"),
    ("http://100.64.0.1/", "not a public IP"),
    ("http://192.0.2.1/", "not a public IP"),
    ("http://240.0.0.1/", "not a public IP"),
    ("http://255.255.255.255/", "not a public IP"),
    ("http://224.0.0.1/", "not a public IP"),
    ("http://0.0.0.0/", "not a public IP"),
    ("１２７.０.０.１", "not a public IP"),
    # IPv4 in short, decimal, hex and octal forms
    ("http://2130706433/", "not a public IP"),
    ("http://127.1/", "not a public IP"),
    ("http://0x7f.0.0.1/", "not a public IP"),
    ("http://0x7f000001/", "not a public IP"),
    ("http://010.0.0.1/", "not a public IP"),
    ("http://127.0.0.1.5/", "not a public IP"),
    # IPv6
    ("http://[::1]/", "not a public IP"),
    ("http://[::]/", "not a public IP"),
    ("http://[fd00:ec2::254]/", "not a public IP"),
    ("http://[fe80::1]/", "not a public IP"),
    ("http://[fe80::1%25eth0]/", "not a public IP"),
    ("http://[fec0::1]/", "not a public IP"),
    ("http://[ff02::1]/", "not a public IP"),
    ("http://[2001:db8::1]/", "not a public IP"),
    ("http://[::ffff:127.0.0.1]/", "not a public IP"),
    ("http://[::ffff:a9fe:a9fe]/", "not a public IP"),
    ("http://[2002:a9fe:a9fe::1]/", "not a public IP"),  # 6to4 of 169.254.169.254
    ("http://[64:ff9b::a9fe:a9fe]/", "not a public IP"),  # NAT64 of 169.254.169.254
    ("http://[zz::1]/", "not a valid"),
    # length
    ("https://acme.com/" + "a" * MAX_URL_LENGTH, "longer than 2048 characters"),
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED)
def test_accepted_urls_are_normalised(value: str, expected: str) -> None:
    assert normalize_url(value) == expected
    assert looks_like_url(value)


@pytest.mark.parametrize(("value", "reason"), REJECTED)
def test_rejected_values_say_why(value: str, reason: str) -> None:
    with pytest.raises(InvalidUrl) as caught:
        normalize_url(value)
    assert reason in str(caught.value)
    assert not looks_like_url(value)


def test_invalid_url_is_a_value_error_with_the_reason() -> None:
    # callers catch ValueError and store its text as the row's error
    with pytest.raises(ValueError) as caught:
        normalize_url("ftp://acme.com/files")
    assert str(caught.value) == "not an http(s) URL (ftp: links are not supported)"


def test_length_limit_applies_to_the_result() -> None:
    base = "https://acme.com/"
    exactly = base + "a" * (MAX_URL_LENGTH - len(base))
    assert normalize_url(exactly) == exactly
    # the dropped fragment does not count
    assert normalize_url(exactly + "#" + "f" * 100) == exactly
    with pytest.raises(InvalidUrl, match="longer than 2048"):
        normalize_url(exactly + "a")


def test_normalising_is_idempotent() -> None:
    for value, expected in ACCEPTED:
        assert normalize_url(expected) == expected, value


def test_the_fast_path_agrees_with_the_general_one():
    """Every string the regex fast path decides gets exactly the result the general path gives."""
    import itertools
    import random

    from chalicelib.intake import urls

    rng = random.Random(5)
    schemes = ["", "http://", "https://", "HTTPS://", "Http://", "//", "ftp://", "mailto:"]
    hosts = ["acme.com", "WWW.Acme.COM", "a-b.co.uk", "-bad.com", "bad-.com", "x.y", "acme..com", "acme.com.",
             "localhost", "db.internal", "printer.local", "my.lan", "0x7f.0.0.1", "127.0.0.1", "10.1.2.3",
             "xn--bcher-kva.example", "b\u00fccher.de", "acme", "a" * 64 + ".com", "acme.c0m", "acme.com:8080",
             "user@acme.com", "acme.com:443", "[::1]", "1.5e3"]
    tails = ["", "/", "/about", "/Path/With/Case", "?x=1", "/p?q=1&r=2", "#top", "/p?#f", "?",
             "/%20x", "/caf\u00e9", "/" + "p" * 2100, "/a\\b", "?q=a?b", "#f?x"]
    cases = ["".join(parts) for parts in itertools.product(schemes, hosts, tails)]
    cases += ["".join(rng.choice(pool) for pool in (schemes, hosts, tails)) for _ in range(2000)]
    decided = 0
    for text in cases:
        fast = urls._fast_path(text)
        if fast is None:
            continue
        decided += 1
        try:
            general = urls._general_path(text)
        except urls.InvalidUrl as exc:
            general = f"invalid: {exc}"
        assert fast == general, text
    assert decided > 500  # the fast path takes the common shapes


def test_normalize_url_gives_what_the_slow_path_gives_for_every_value():
    """normalize_url tries the fast path on the value as it comes (trimmed) before unwrapping it;
    whatever it answers, result or reason, is what unwrapping then the general path answer."""
    import itertools
    import random

    from chalicelib.intake import urls

    def slow(value: str) -> str:
        try:
            return urls._general_path(urls._unwrap(value))
        except InvalidUrl as exc:
            return f"invalid: {exc}"

    def fast(value: str) -> str:
        try:
            return normalize_url(value)
        except InvalidUrl as exc:
            return f"invalid: {exc}"

    rng = random.Random(24)
    schemes = ["", "http://", "https://", "HTTP://", "//", "javascript:", "ftp://"]
    hosts = ["acme.com", "WWW.Acme.COM", "a-b.co.uk", "-bad.com", "acme..com", "acme.com.", "localhost",
             "db.internal", "127.0.0.1", "0x7f.0.0.1", "b\u00fccher.de", "acme", "acme.com:8080", "user@acme.com",
             "[::1]", "a" * 64 + ".com", "x" * 250 + ".com"]
    tails = ["", "/", "/about", "?x=1", "/p?q=1&r=2#top", "#f", "/caf\u00e9", "/a\\b", "/" + "p" * 2100,
             "/a b", "/a\tb", "/a\nb", "?q=\x00", "#f\x7f", "/\u00a0", "/\u2028x", "/\x85", "?\x1f", "/\x0b"]
    wrappers = [("", ""), (" ", " "), ("\t", "\n"), ('"', '"'), ("'", "'"), ("<", ">"), ('" ', ' "'),
                ("\u00a0", ""), ("", "\u3000"), ('"', ""), ("<", ""), ("\x00", ""), ("", "\r\n")]
    cases = [w[0] + "".join(parts) + w[1] for *parts, w in itertools.product(schemes, hosts, tails, wrappers[:4])]
    cases += [w[0] + "".join(rng.choice(pool) for pool in (schemes, hosts, tails)) + w[1]
              for w in (rng.choice(wrappers) for _ in range(5000))]
    cases += [value for value, _ in ACCEPTED + REJECTED]
    cases += ["x" * 9000, "acme.com/" + "a" * 9000, "acme.com#" + "f" * 9000]
    for value in cases:
        assert fast(value) == slow(value), repr(value)
