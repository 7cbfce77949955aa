"""Is a cleaned opener fit to send? Pure checks on the model's answer, after `clean_opener`.

An opener goes into a sales e-mail under the sender's name. It must not carry a link, an e-mail
address or a domain other than the prospect's own, a phone number, or the sender's instructions
read back; and text planted in a page, a CSV cell or a URL ("Ignore previous instructions…")
must not show through. A rejected answer is retried like any unusable answer, then the URL fails
with the reason (which never quotes the answer).

Link-like text is found by its structure, not by a list of favourite endings: the text is first
brought to one form (NFKC, so full-width letters and dots are plain ones; ideographic full stops
as dots; ``hxxp://``, ``[.]``, ``(dot)`` and ``[at]`` undone; letters that merely look Latin, such
as Cyrillic ``е``, read as the Latin letter they imitate), then every ``label.label`` run is a
domain when the Public Suffix List knows its ending (``publicsuffixlist``, whose snapshot ships
inside the package and is never fetched), or when a label is punycode (``xn--``). So "node.js",
"e.g.", "3.5" and "v2.0" are prose, while "evil.click", "evil。com" and "еxample.com" are not.

Some names end in a real suffix and are still no domain: a file name whose extension is also a
country's ending ("main.py", "README.md", "run.sh", "lib.rs", "main.tf": ``FILE_EXTENSIONS``,
written in lower case after one name) and the .NET family written as such ("ASP.NET", "VB.NET":
``DOTNET_NAMES`` with "NET" in capitals; "asp.net" in lower case is a web site). A dot with
spaces on both sides ("evil . com") is read as a dot, and a bare IPv4 address ("10.0.0.1") is
refused like a link.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from urllib.parse import urlsplit

from confusable_homoglyphs import confusables
from publicsuffixlist import PublicSuffixList

# accept_unknown=False: an ending the list does not know ("js", "g", "5") is not a domain. The
# constructor reads the list bundled with the package (no source given: no network, no cache).
_PSL = PublicSuffixList(accept_unknown=False)

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# a scheme ("https://", "hxxp://" once undone, "ftp://") or a www. host: a link whatever follows
_LINK = re.compile(r"[a-z][a-z0-9+.-]{0,15}:/{2}|\bwww\d{0,3}\.[\w-]", re.IGNORECASE)
# Runs of dot-separated labels; each run is checked against the Public Suffix List. Linear: each
# repetition must consume a dot, and a run starts only where no label character precedes it.
_HOST = re.compile(r"(?<![\w@.-])[\w-]{1,63}(?:\.[\w-]{1,63})+")
# Obfuscations that exist only to slip a link past a filter: "evil[.]com", "evil (dot) com",
# "sales [at] evil.com", "hxxps[:]//", "h**p://".
_DOT_WORD = re.compile(r"\s*[\[({]\s*(?:\.|dot)\s*[\])}]\s*", re.IGNORECASE)
_AT_WORD = re.compile(r"\s*[\[({]\s*(?:@|at)\s*[\])}]\s*", re.IGNORECASE)
_COLON_WORD = re.compile(r"\s*[\[({]\s*:\s*[\])}]\s*")
_DEFANGED_SCHEME = re.compile(r"\bh(?:xx|\*\*|tt)p(s?)(?=:/)", re.IGNORECASE)
# A dot written with spaces around it between two labels ("evil . com"): a dot. (A space on one
# side only is ordinary prose: "the shop. Com..." ends a sentence, "built on .NET" names a
# framework.)
_SPACED_DOT = re.compile(r"(?<=[\w-])[^\S\n]+\.[^\S\n]+(?=[\w-])")
# Four dot-separated numbers of 1..3 digits, not part of a longer dotted run ("1.2.3.4.5").
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w-]|\.\d)")
# File extensions that are also a public suffix (a country's or a brand's ending): "name.ext",
# the extension in lower case, is a file name. Endings much used for web sites (.ai, .io, .so,
# .pl, .cc, .me) and those bought to look like files in phishing (.zip, .mov) are not here.
FILE_EXTENSIONS = frozenset({"py", "md", "sh", "rs", "tf"})
# Names of the .NET family, written with "NET" in capitals ("ASP.NET"): a framework, not a site.
DOTNET_NAMES = frozenset({"asp", "vb", "ado", "ml"})
# Dots that IDNA treats as label separators but NFKC leaves alone (ideographic full stops).
_DOTS = str.maketrans({"\u3002": ".", "\uff61": ".", "\ufe12": "."})
# Digits inside a word or a hyphenated name ("acme-12345678", "id-2023-0001-42") are not a phone
# number; one standing on its own is.
_PHONE = re.compile(r"(?<![\w.-])\+?\(?\d[\d\s().-]{6,}\d(?![\w.]|-\w)")
_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget)\b[^.]{0,40}\b(?:instructions?|prompts?|rules)\b|\bsystem prompt\b|"
    r"\bprompt injection\b|\bjailbreak\b|\bas an ai\b|\blanguage model\b",
    re.IGNORECASE,
)
_YEARS = re.compile(r"\(?\d{4}\s*[-–]\s*\d{4}\)?")  # "2019-2023" is a span of years, not a phone number
ECHO_WORDS = 8  # this many consecutive words of the instructions in an opener is reading them back


@functools.lru_cache(maxsize=4096)
def _lookalike(char: str) -> str:
    """The ASCII letter or digit `char` imitates (Cyrillic "е" -> "e"), else `char` itself.
    One character for one, so positions in the skeleton are positions in the text."""
    if char.isascii() or not char.isalpha():
        return char
    for form in dict.fromkeys((char, char.upper(), char.lower())):  # Cyrillic "м" only imitates as "М"
        for found in confusables.is_confusable(form, preferred_aliases=["latin"], greedy=True) or []:
            for glyph in found["homoglyphs"]:
                if len(glyph["c"]) == 1 and glyph["c"].isascii() and glyph["c"].isalnum():
                    return glyph["c"].lower()
    return char


def normalise(text: str, keep_case: bool = False) -> str:
    """`text` in the one form the checks read: NFKC, lower case (unless ``keep_case``),
    ideographic dots as dots, spaced dots ("evil . com") as dots and defanged links
    ("evil[.]com", "hxxp://") undone."""
    text = unicodedata.normalize("NFKC", text).translate(_DOTS)
    text = _DOT_WORD.sub(".", text)
    text = _SPACED_DOT.sub(".", text)
    text = _AT_WORD.sub("@", text)
    text = _COLON_WORD.sub(":", text)
    text = _DEFANGED_SCHEME.sub(r"http\1", text)
    return text if keep_case else text.lower()


def skeleton(text: str) -> str:
    """A normalised text with every look-alike letter replaced by the Latin one it imitates."""
    return "".join(_lookalike(char) for char in text)


def _ascii_host(host: str) -> str:
    """A host name in its ASCII (punycode) form, so "еxample.com" with a Cyrillic е is not
    "example.com"; unchanged when it cannot be encoded."""
    host = host.strip(".").lower()
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _site_of(url: str) -> str:
    """The prospect's registrable domain ("acme.co.uk" for https://www.shop.acme.co.uk/), ASCII."""
    host = _ascii_host(urlsplit(url).hostname or "")
    return _PSL.privatesuffix(host) or host


def _is_domain(*forms: str) -> bool:
    """Does one spelling of a dotted run end in a public suffix after a label of its own (or carry
    a punycode label)?"""
    for form in forms:
        host = form.strip(".-")
        if any(label.startswith("xn--") for label in host.split(".")):
            return True
        if _PSL.privatesuffix(host) is not None:
            return True
    return False


def _is_name_not_site(written: str) -> bool:
    """A dotted run ending in a public suffix that is still a name, not a site (``written`` as
    the opener has it, case kept): a file name ("main.py") or a .NET framework ("ASP.NET")."""
    labels = written.strip(".-").split(".")
    if len(labels) != 2 or not labels[0]:
        return False
    name, ending = labels
    if ending in FILE_EXTENSIONS:  # lower case, as file names are written
        return True
    return ending == "NET" and name.lower() in DOTNET_NAMES


def _ip_address(text: str) -> str | None:
    """The IPv4 address ``text`` is (each number 0..255, leading zeros allowed), or None."""
    parts = text.split(".")
    if len(parts) != 4 or any(int(part) > 255 for part in parts):
        return None
    return str(ipaddress.IPv4Address(".".join(str(int(part)) for part in parts)))


def _same_site(host: str, site: str) -> bool:
    host = _ascii_host(host)
    return bool(site) and (host == site or host.endswith("." + site))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _echoes(text: str, instructions: str | None) -> bool:
    source = _words(unicodedata.normalize("NFKC", instructions or ""))
    if len(source) < ECHO_WORDS:
        return False
    grams = {tuple(source[i:i + ECHO_WORDS]) for i in range(len(source) - ECHO_WORDS + 1)}
    said = _words(text)
    return any(tuple(said[i:i + ECHO_WORDS]) in grams for i in range(len(said) - ECHO_WORDS + 1))


def problem(opener: str, url: str, instructions: str | None = None) -> str | None:
    """Why `opener` must not be sent for the prospect at `url`, or None when it is fine."""
    cased = normalise(opener, keep_case=True)
    plain = cased.lower()
    if len(plain) != len(cased):  # lower case changed the length ("İ"): no name is read by its case
        cased = plain
    looks = skeleton(plain)  # same length as `plain`: a match's span is the same in both
    if _EMAIL.search(looks):
        return "it contains an e-mail address"
    if _LINK.search(looks):
        return "it contains a link"
    site = _site_of(url)
    without_hosts = list(plain)
    for match in _HOST.finditer(looks):
        written = plain[match.start():match.end()]
        if not _is_domain(written, match.group()) or _is_name_not_site(skeleton(cased[match.start():match.end()])):
            continue
        if not _same_site(written.strip(".-"), site):
            return "it names a domain other than the prospect's"
        # the prospect's own host (the only domain left by now) may carry digits: not a phone number
        without_hosts[match.start():match.end()] = " " * (match.end() - match.start())
    own_host = urlsplit(url).hostname or ""
    own_ip = _ip_address(own_host) if _IPV4.fullmatch(own_host) else None
    for match in _IPV4.finditer(looks):
        address = _ip_address(match.group())
        if address is not None and address != own_ip:
            return "it contains an IP address"
        if address is not None:  # the prospect's own address: not a phone number either
            without_hosts[match.start():match.end()] = " " * (match.end() - match.start())
    for match in _PHONE.finditer("".join(without_hosts)):
        if sum(c.isdigit() for c in match.group()) >= 8 and not _YEARS.fullmatch(match.group().strip()):
            return "it contains a phone number"
    if _INJECTION.search(looks):
        return "it reads like instructions planted in the data, not an opener"
    if _echoes(plain, instructions):
        return "it repeats the sender's instructions"
    return None
