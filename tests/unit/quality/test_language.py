"""Language: the page's declared or detected language, and the wrong-language check, on real
lines in en, de, fr, es, it, nl, pt, with names of shops and places that must not mislead it."""

from __future__ import annotations

import pytest

from chalicelib.quality.language import detect, is_wrong_language, iso_code, language_name, page_language

LINES = {
    "en": "Loved the new storefront in your neighbourhood, and the sourdough selection looks amazing this spring.",
    "de": "Ihre neue Filiale in Berlin Mitte sieht großartig aus, und die Auswahl an Sauerteigbroten ist toll.",
    "fr": "Votre nouvelle boutique à Lyon est superbe, et la sélection de pains au levain est impressionnante.",
    "es": "Su nueva tienda en Madrid se ve increíble y la selección de panes de masa madre es impresionante.",
    "it": "Il vostro nuovo negozio a Milano è splendido e la selezione di pane a lievitazione naturale è notevole.",
    "nl": "Jullie nieuwe winkel in Utrecht ziet er geweldig uit en de keuze aan zuurdesembrood is indrukwekkend.",
    "pt": "A sua nova loja em Lisboa está incrível e a seleção de pães de fermentação natural é impressionante.",
}

# English lines heavy with names from other languages: a careless check calls them foreign.
NAME_HEAVY_ENGLISH = [
    "Loved the Kaffeehaus Müller rebrand on your Instagram, the new Berlin Mitte storefront looks fantastic.",
    "Noticed Bäckerei Schmidt bakes sourdough daily in München.",
    "Hi Jean-Pierre, Boulangerie Dupont's croissants look great.",
    "Saw Les Délices de Marie in Saint-Germain-des-Prés on Le Figaro's list, congrats.",
    "Panadería La Espiga de Oro in Valladolid looks lovely.",
    "Great to see Pasticceria Marchesi in Milano expanding.",
    "Great job!",
    "Hi Anna, https://www.baeckerei-mueller.de/ueber-uns is a great read.",
]


@pytest.mark.parametrize("code", sorted(LINES))
def test_each_language_is_detected(code):
    assert detect(LINES[code]) == code


@pytest.mark.parametrize("code", sorted(LINES))
def test_a_line_in_the_expected_language_is_never_wrong(code):
    assert not is_wrong_language(LINES[code], code)


@pytest.mark.parametrize("expected", sorted(LINES))
@pytest.mark.parametrize("written", sorted(LINES))
def test_a_line_in_another_language_is_wrong(expected, written):
    assert is_wrong_language(LINES[written], expected) == (written != expected)


@pytest.mark.parametrize("line", NAME_HEAVY_ENGLISH)
def test_short_or_name_heavy_english_is_not_misflagged(line):
    assert not is_wrong_language(line, "en")


@pytest.mark.parametrize(("line", "names"), [
    ("Bäckerei und Konditorei Müller & Söhne am Marktplatz in Köln-Ehrenfeld looks great.",
     ["Bäckerei und Konditorei Müller & Söhne am Marktplatz", "Köln"]),
    ("Les Délices de la Boulangerie du Marché Saint-Germain: lovely.", ["Les Délices de la Boulangerie du Marché"]),
])
def test_the_rows_names_are_left_out_before_detecting(line, names):
    assert is_wrong_language(line, "en")  # the detector alone reads the names' language
    assert not is_wrong_language(line, "en", names=names)


@pytest.mark.parametrize(("written", "expected"), [("pt", "gl"), ("nl", "af"), ("es", "gl")])
def test_close_siblings_the_detector_confuses_are_not_wrong(written, expected):
    # Galician and Afrikaans lines read as Portuguese, Spanish, Dutch to the model.
    assert not is_wrong_language(LINES[written], expected)


def test_unknown_or_malformed_expected_language_is_not_judged():
    assert not is_wrong_language(LINES["de"], "xx")
    assert not is_wrong_language(LINES["de"], "")
    assert is_wrong_language(LINES["de"], "EN-gb")


def test_page_language_prefers_what_the_page_declares():
    german = LINES["de"]
    assert page_language("de-DE", "fr_FR", "nl", german) == "de"
    assert page_language(None, "fr_FR", "nl", german) == "fr"
    assert page_language("", "", "nl-NL, en;q=0.5", german) == "nl"
    assert page_language("x-default", None, None, LINES["pt"]) == "pt"  # not a language: detected instead
    assert page_language(None, None, None, german) == "de"
    assert page_language(None, None, None, "Hello there") is None  # too short to tell
    assert page_language(None, None, None, None) is None


def test_codes_and_names():
    assert iso_code("pt_BR") == "pt" and iso_code("EN") == "en" and iso_code("zh-Hant-TW") == "zh"
    assert iso_code("deu") is None and iso_code("") is None and iso_code(None) is None
    assert language_name("de") == "German"
    assert "xh" in language_name("xh")
