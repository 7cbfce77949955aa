"""``provider_remaining``: the x-ratelimit-remaining-requests / -reset-requests pair (and the
-tokens one) a server that states no limit may still send, parsed strictly (a bad value is no
value); ``exhausted``: the budgets a 429's headers show used up."""

from __future__ import annotations

import httpx2
import pytest

from chalicelib.generation.ratelimit import exhausted, provider_remaining


@pytest.mark.parametrize(("headers", "expected"), [
    ({"x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s"}, (59, 1.0)),
    ({"X-RateLimit-Remaining-Requests": "0", "X-RateLimit-Reset-Requests": "6m0s"}, (0, 360.0)),  # any case
    ({"x-ratelimit-remaining-requests": " 7 ", "x-ratelimit-reset-requests": "20ms"}, (7, 0.02)),
    ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1.5"}, (3, 1.5)),  # bare seconds
    ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "250µs"}, (3, 0.00025)),
    ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "0s"}, (3, 0.0)),  # full
    ({"x-ratelimit-remaining-requests": "59"}, None),  # no reset: nothing to gauge with
    ({"x-ratelimit-reset-requests": "1s"}, None),
    ({}, None),
    ({"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "1s"}, None),
    ({"x-ratelimit-remaining-requests": "1.5", "x-ratelimit-reset-requests": "1s"}, None),
    ({"x-ratelimit-remaining-requests": "５", "x-ratelimit-reset-requests": "1s"}, None),  # non-ASCII digit
    ({"x-ratelimit-remaining-requests": "1" * 13, "x-ratelimit-reset-requests": "1s"}, None),  # too long
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "soon"}, None),
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "-1s"}, None),
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "-2"}, None),  # negative
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "nan"}, None),
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "inf"}, None),
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "25h"}, None),  # over a day
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "١s"}, None),  # non-ASCII digit
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1" * 41 + "s"}, None),
])
def test_provider_remaining(headers, expected):
    result = provider_remaining(headers)
    if expected is None:
        assert result is None
    else:
        assert result == (expected[0], pytest.approx(expected[1]))


def test_provider_remaining_reads_httpx_headers():
    headers = httpx2.Headers({"x-ratelimit-remaining-requests": "12", "x-ratelimit-reset-requests": "1.2s"})
    assert provider_remaining(headers) == (12, pytest.approx(1.2))


def test_provider_remaining_of_the_token_budget_is_read_alike_and_apart():
    headers = {"x-ratelimit-remaining-tokens": "149000", "x-ratelimit-reset-tokens": "6m0s",
               "x-ratelimit-remaining-requests": "12", "x-ratelimit-reset-requests": "1.2s"}
    assert provider_remaining(headers, "tokens") == (149000, pytest.approx(360.0))
    assert provider_remaining(headers, "requests") == (12, pytest.approx(1.2))
    assert provider_remaining({"x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "soon"},
                              "tokens") is None
    assert provider_remaining({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"},
                              "tokens") is None  # the other budget's pair says nothing of this one
    with pytest.raises(ValueError):
        provider_remaining(headers, "images")


@pytest.mark.parametrize(("headers", "expected"), [
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1s",
      "x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "1s"}, ("tokens",)),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"}, ("requests",)),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1s",
      "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}, ("requests", "tokens")),
    ({"x-ratelimit-remaining-tokens": "0"}, ()),  # no reset: unusable, says nothing
    ({"retry-after": "1"}, ()),
    ({}, ()),
])
def test_exhausted(headers, expected):
    assert exhausted(headers) == expected
