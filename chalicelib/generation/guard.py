"""Is a cleaned opener fit to send? Pure checks on the model's answer, after `clean_opener`.

An opener goes into a sales e-mail under the sender's name. It must not carry a link, an e-mail
address or a domain other than the prospect's own, a phone number, or the sender's instructions
read back; and text planted in a page, a CSV cell or a URL ("Ignore previous instructions…")
must not show through. A rejected answer is retried like any unusable answer, then the URL fails
with the reason.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_LINK = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
# Host names with a common top-level domain (a bare "node.js" or "e.g." is not one).
_TLDS = ("com|net|org|io|co|ai|app|dev|biz|info|me|us|uk|de|fr|es|it|nl|be|ch|at|se|no|dk|fi|pl|cz|pt|ie|ca|au|nz|"
         "in|jp|cn|br|mx|ru|eu|tech|cloud|online|site|store|shop|xyz|gg|tv|ly|to|so|sh|fm|am|is|info|pro|edu|gov")
_DOMAIN = re.compile(rf"\b((?:[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.)+(?:{_TLDS}))\b", re.IGNORECASE)
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


def _host_of(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def _same_site(domain: str, prospect: str) -> bool:
    domain = domain.lower().rstrip(".")
    domain = domain[4:] if domain.startswith("www.") else domain
    return bool(prospect) and (domain == prospect or domain.endswith("." + prospect) or prospect.endswith("." + domain))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _echoes(text: str, instructions: str | None) -> bool:
    source = _words(instructions or "")
    if len(source) < ECHO_WORDS:
        return False
    grams = {tuple(source[i:i + ECHO_WORDS]) for i in range(len(source) - ECHO_WORDS + 1)}
    said = _words(text)
    return any(tuple(said[i:i + ECHO_WORDS]) in grams for i in range(len(said) - ECHO_WORDS + 1))


def problem(opener: str, url: str, instructions: str | None = None) -> str | None:
    """Why `opener` must not be sent for the prospect at `url`, or None when it is fine."""
    prospect = _host_of(url)
    if _EMAIL.search(opener):
        return "it contains an e-mail address"
    if _LINK.search(opener):
        return "it contains a link"
    for match in _DOMAIN.finditer(opener):
        if not _same_site(match.group(1), prospect):
            return "it names a domain other than the prospect's"
    # the prospect's own host (the only domain left by now) may carry digits: not a phone number
    for match in _PHONE.finditer(_DOMAIN.sub(" ", opener)):
        if sum(c.isdigit() for c in match.group()) >= 8 and not _YEARS.fullmatch(match.group().strip()):
            return "it contains a phone number"
    if _INJECTION.search(opener):
        return "it reads like instructions planted in the data, not an opener"
    if _echoes(opener, instructions):
        return "it repeats the sender's instructions"
    return None
