"""The openers the fake writes when a request wants more than a plain line: grounded on the
prompt's own data, in the language asked for, and the bad ones of each misbehaviour rule.

A real model asked for ``{"opener", "evidence"}`` copies a few words of the prospect's page or
row into ``evidence`` and builds the opener around them. The fake does the same, deterministically,
so the app's grounding check has something true to find: evidence is a verbatim slice of the
``<page>`` block (a sentence, at most :data:`EVIDENCE_WORDS` words) or, without a page, a value of
the ``<prospect_data>`` block (``name: "value"`` lines, JSON-quoted, decoded here); with neither it
is ``None`` and the opener is generic (names the host, claims nothing, holds no number).

The language asked for is the last one the system or user messages name outside the data blocks,
as ``in German`` / ``language: German`` / ``language: de`` / ``ISO 639-1 code "de"``; English when
none is named. The fake
writes English, German, French and Spanish (:data:`LANGUAGES`); another language asked for is
answered in English, as a weak model would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .tokens import message_text

EVIDENCE_WORDS = 12
LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es")
LONG_WORDS = 90

_NAMES = {
    "english": "en", "german": "de", "deutsch": "de", "french": "fr", "français": "fr", "francais": "fr",
    "spanish": "es", "español": "es", "espanol": "es", "italian": "it", "dutch": "nl", "portuguese": "pt",
    "polish": "pl", "swedish": "sv", "danish": "da", "japanese": "ja", "chinese": "zh",
}
_CODES = frozenset("ar cs da de el en es fi fr he hi hu id it ja ko nl no pl pt ro ru sv th tr uk vi zh".split())
_NAME = "|".join(sorted(_NAMES, key=len, reverse=True))
_ASKED = re.compile(
    rf"\b(?:in|language\s*[:=]?)\s*[\"'(]?({_NAME})\b"
    r"|\b(?:language|ISO 639-1)(?:\s+code)?(?:\s*\(ISO 639-1\))?\s*(?:[:=]|\bis\b)?\s*[\"'(]?([a-z]{2})\b(?![-\w])",
    re.IGNORECASE,
)
_BLOCK = re.compile(r"<(page|prospect_data)>(.*?)</\1>", re.DOTALL)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_WORD = re.compile(r"\S+")
_TRIM = " \t.,;:!?-–—\"'“”‘’()[]"

# ---------------------------------------------------------------------------- texts per language
# No digits anywhere: the app checks that every number of an opener is in its source.

_GROUNDED = {
    "en": (
        "I was reading about {host} and this stood out: {evidence}. Would you be open to a quick chat next week?",
        "One line on {host} caught my attention: {evidence}. Could we find time for a short call to compare notes?",
        "Spent some time on {host} today, and this part stayed with me: {evidence}. Are you open to a brief talk?",
    ),
    "de": (
        "Beim Lesen über {host} ist mir das aufgefallen: {evidence}. Hätten Sie nächste Woche Zeit für ein "
        "kurzes Gespräch?",
        "Eine Zeile auf {host} hat mich neugierig gemacht: {evidence}. Wollen wir uns bald einmal kurz austauschen?",
        "Ich habe mir heute {host} angesehen, und dieser Teil ist mir geblieben: {evidence}. Passt Ihnen ein "
        "kurzer Anruf?",
    ),
    "fr": (
        "En lisant la page de {host}, ce passage m'a marqué : {evidence}. Seriez-vous disponible pour un court "
        "échange la semaine prochaine ?",
        "Une phrase sur {host} a retenu mon attention : {evidence}. Pourrions-nous prendre un moment pour en "
        "discuter ?",
        "J'ai passé un peu de temps sur {host} aujourd'hui, et ceci m'est resté : {evidence}. Êtes-vous ouvert "
        "à un bref appel ?",
    ),
    "es": (
        "Leyendo sobre {host} me llamó la atención esto: {evidence}. ¿Tendría tiempo para una breve charla la "
        "próxima semana?",
        "Una frase de {host} despertó mi interés: {evidence}. ¿Podríamos encontrar un momento para hablar de ello?",
        "Hoy pasé un rato en {host} y esta parte se me quedó grabada: {evidence}. ¿Le parece bien una llamada "
        "corta?",
    ),
}
_GENERIC = {
    "en": (
        "Came across {host} and liked how clearly it explains what you do. Would you be open to a quick chat "
        "next week?",
        "Your work at {host} stood out while I was looking around the space. Could we find time for a short call?",
        "Noticed {host} is building something genuinely useful. Are you open to a brief conversation this week?",
    ),
    "de": (
        "Ich bin auf {host} gestoßen und finde spannend, was Sie machen. Hätten Sie nächste Woche Zeit für ein "
        "kurzes Gespräch?",
        "Ihre Arbeit bei {host} ist mir bei meiner Recherche aufgefallen. Wollen wir uns bald einmal kurz "
        "austauschen?",
        "Mir ist aufgefallen, dass {host} etwas wirklich Nützliches aufbaut. Passt Ihnen diese Woche ein kurzer "
        "Anruf?",
    ),
    "fr": (
        "J'ai découvert {host} et j'ai aimé la clarté avec laquelle vous présentez votre travail. Seriez-vous "
        "disponible pour un court échange ?",
        "Votre travail chez {host} m'a marqué pendant mes recherches. Pourrions-nous prendre un moment pour en "
        "discuter ?",
        "J'ai remarqué que {host} construit quelque chose de vraiment utile. Êtes-vous ouvert à un bref appel "
        "cette semaine ?",
    ),
    "es": (
        "Descubrí {host} y me gustó lo claro que explica lo que hacen. ¿Tendría tiempo para una breve charla la "
        "próxima semana?",
        "Su trabajo en {host} me llamó la atención mientras investigaba el sector. ¿Podríamos hablar un momento?",
        "Vi que {host} está construyendo algo realmente útil. ¿Le parece bien una llamada corta esta semana?",
    ),
}
_FILLER = {
    "en": "We help teams like yours save time every single week, and I would love to explain how it works, what "
          "it costs, who already uses it and why they chose it over the other options they looked at before.",
    "de": "Wir helfen Teams wie Ihrem, jede Woche viel Zeit zu sparen, und ich würde Ihnen gern zeigen, wie das "
          "funktioniert, was es kostet, wer es schon nutzt und warum sie sich dafür entschieden haben.",
    "fr": "Nous aidons des équipes comme la vôtre à gagner du temps chaque semaine, et je serais ravi de vous "
          "montrer comment cela fonctionne, ce que cela coûte, qui l'utilise déjà et pourquoi ils l'ont choisi.",
    "es": "Ayudamos a equipos como el suyo a ahorrar tiempo cada semana, y me encantaría mostrarle cómo funciona, "
          "cuánto cuesta, quién lo usa ya y por qué lo eligieron frente a las demás opciones que vieron.",
}
_SPAM = {
    "en": "Act now!!! Limited time offer, guaranteed results for {host}. Reply today!",
    "de": "Jetzt zugreifen!!! Nur für kurze Zeit, garantierte Ergebnisse für {host}. Antworten Sie noch heute!",
    "fr": "Agissez maintenant !!! Offre limitée, résultats garantis pour {host}. Répondez dès aujourd'hui !",
    "es": "¡¡¡Actúe ya!!! Oferta por tiempo limitado, resultados garantizados para {host}. ¡Responda hoy!",
}
_INVENTED = {
    "en": "Congratulations on 25 years of {host}, what a milestone. Would you be open to a quick chat next week?",
    "de": "Herzlichen Glückwunsch zu 25 Jahren {host}, was für ein Meilenstein. Hätten Sie nächste Woche Zeit für "
          "ein kurzes Gespräch?",
    "fr": "Félicitations pour les 25 ans de {host}, quelle belle étape. Seriez-vous disponible pour un court "
          "échange ?",
    "es": "Felicidades por los 25 años de {host}, todo un logro. ¿Tendría tiempo para una breve charla?",
}
INVENTED_EVIDENCE = "celebrating 25 years in business this spring"
"""The evidence of an ``invent`` answer: a claim no prompt of the tests holds."""
_REPEATED = {
    "en": "Loved what your team is building, would you be open to a quick chat next week?",
    "de": "Mir gefällt, was Ihr Team aufbaut, hätten Sie nächste Woche Zeit für ein kurzes Gespräch?",
    "fr": "J'aime ce que votre équipe construit, seriez-vous disponible pour un court échange ?",
    "es": "Me gusta lo que su equipo está construyendo, ¿tendría tiempo para una breve charla?",
}


# ---------------------------------------------------------------------------- reading the prompt


def instruction_texts(messages: Sequence[Any]) -> list[str]:
    """System and user texts, without their data blocks (a page saying "in English" asks nothing)."""
    return [_BLOCK.sub(" ", message_text(m)) for m in messages
            if isinstance(m, dict) and m.get("role") in ("system", "developer", "user")]


def asked_language(messages: Sequence[Any]) -> str:
    """The ISO 639-1 code of the language the request asks for (the last one named), else ``en``."""
    found = "en"
    for text in instruction_texts(messages):
        for match in _ASKED.finditer(text):
            if match.group(1):
                found = _NAMES[match.group(1).lower()]
            elif match.group(2).lower() in _CODES:  # "language to ..." names no language
                found = match.group(2).lower()
    return found


def _blocks(messages: Sequence[Any], tag: str) -> list[str]:
    """Contents of every ``<tag>`` block, latest message first."""
    out: list[str] = []
    for message in reversed(list(messages)):
        if isinstance(message, dict) and message.get("role") in ("user", "system", "developer"):
            out.extend(m.group(2) for m in _BLOCK.finditer(message_text(message)) if m.group(1) == tag)
    return out


def _slice(text: str, min_words: int = 2, trim: str = _TRIM) -> str | None:
    """At most EVIDENCE_WORDS leading words of ``text``, cut from the text itself (so verbatim), trimmed of
    ``trim`` at the ends; None if fewer than ``min_words`` words are left."""
    words = list(_WORD.finditer(text))[:EVIDENCE_WORDS]
    if not words:
        return None
    piece = text[words[0].start():words[-1].end()].strip(trim)
    return piece if len(piece.split()) >= min_words else None


def _field_value(line: str) -> str | None:
    _, sep, value = line.partition(": ")
    if not sep:
        return None
    value = value.strip()
    if value.startswith('"'):
        try:
            value = json.loads(value)
        except ValueError:
            value = value.strip('"')
    if not isinstance(value, str) or "://" in value or "@" in value:
        return None
    piece = _slice(value, 1, " .,;:")  # quotes stay: a short value is kept whole, balanced
    return piece if piece and re.search(r"[^\W\d_]{2}", piece) else None


def evidence_candidates(messages: Sequence[Any]) -> list[str]:
    """What an opener may rest on, best first: sentences of the page, then the row's field values."""
    out: list[str] = []
    for block in _blocks(messages, "page"):
        for line in block.splitlines():
            for match in _SENTENCE.finditer(line):
                piece = _slice(match.group(0))
                if piece and piece not in out:
                    out.append(piece)
    if not out:
        for block in _blocks(messages, "prospect_data"):
            for line in block.splitlines():
                piece = _field_value(line)
                if piece and piece not in out:
                    out.append(piece)
    return out


# ---------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Draft:
    """One opener and the words it rests on (None: no specific claim)."""

    opener: str
    evidence: str | None


def _lang(language: str) -> str:
    return language if language in LANGUAGES else "en"


def good(host: str, candidates: Sequence[str], language: str, index: int = 0) -> Draft:
    """Variant ``index`` of a well-behaved opener: grounded on a candidate if there is one."""
    lang = _lang(language)
    if candidates:
        evidence = candidates[index % len(candidates)]
        template = _GROUNDED[lang][index % len(_GROUNDED[lang])]
        return Draft(template.format(host=host, evidence=evidence), evidence)
    return Draft(_GENERIC[lang][index % len(_GENERIC[lang])].format(host=host), None)


def wrong_language(language: str) -> str:
    """The language a ``wrong_language`` answer is written in: German for English, else English."""
    return "de" if _lang(language) == "en" else "en"


def misbehaving(rule: str, host: str, candidates: Sequence[str], language: str, index: int = 0) -> Draft:
    """Variant ``index`` of an answer that breaks ``rule`` (one of misbehave.RULES but ``no_json``)."""
    lang = _lang(language)
    if rule == "invent":
        return Draft(_INVENTED[lang].format(host=host), INVENTED_EVIDENCE)
    if rule == "repeat":
        return Draft(_REPEATED[lang], None)
    if rule == "spam":
        return Draft(_SPAM[lang].format(host=host), None)
    if rule == "wrong_language":
        return good(host, candidates, wrong_language(language), index)
    if rule == "long":
        draft = good(host, candidates, language, index)
        words = draft.opener.split()
        filler = _FILLER[lang].split()
        while len(words) < LONG_WORDS:
            words.extend(filler)
        text = " ".join(words[:LONG_WORDS]).rstrip(",;:")
        return Draft(text if text.endswith((".", "!", "?")) else text + ".", draft.evidence)
    raise ValueError(f"no opener for rule {rule!r}")


def structured_opener(url: str, language: str = "en", index: int = 0) -> str:
    """The opener of the fake's structured answer (``response_format``) about ``url`` when the
    prompt carries no page and no row fields: what tests expect such a row to hold."""
    from .responses import host_of

    return good(host_of(url), [], language, index).opener
