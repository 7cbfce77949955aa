"""The content of one chat answer, the same for the live endpoint and the Batch API: which parameters
the request may carry (:func:`check`), then what the fake writes (:func:`compose`).

A plain request (no ``response_format``, no JSON asked for in words) gets the plain opener of
responses.py (``make_opener``, as before structured answers existed, so older tests keep their
expectations; in the asked-for language when that is not English). A request wanting JSON gets
the structured answer of structured.py built from writing.py's drafts; with ``content`` set, the
drafts are that text with evidence null. The misbehaviour rule of the request's URL
(misbehave.py) replaces the drafts on a first answer (``content`` or not).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import structured, writing
from .config import FakeConfig
from .misbehave import Tracker
from .responses import APIError, find_url, host_of, make_opener


@dataclass(frozen=True)
class Answer:
    url: str | None
    content: str
    rule: str | None
    """The misbehaviour rule this answer breaks (None: it behaves)."""
    cache_key: str | None


def check(request: Mapping[str, Any], config: FakeConfig) -> structured.Kind:
    """The kind of answer the request wants; APIError 400 for a parameter the fake is told to refuse or
    that OpenAI would refuse (a bad ``response_format``, a ``prompt_cache_key`` that is not a string)."""
    if request.get("prompt_cache_key") is not None:
        if not config.prompt_cache_key_supported:
            raise APIError(400, "Unrecognized request argument supplied: prompt_cache_key", None, "prompt_cache_key")
        if not isinstance(request["prompt_cache_key"], str):
            raise APIError(400, "Invalid type for 'prompt_cache_key': expected a string, but got "
                           f"{type(request['prompt_cache_key']).__name__} instead.", "invalid_type",
                           "prompt_cache_key")
    return structured.kind_of(request, config.response_format_supported)


def compose(request: Mapping[str, Any], kind: structured.Kind, config: FakeConfig, tracker: Tracker) -> Answer:
    """What the fake answers ``request`` (checked by :func:`check`) with, now."""
    messages = request["messages"]
    url = find_url(messages)
    rule = tracker.choose(url, config.misbehave, config.misbehave_seed)
    if rule == "no_json" and kind == "text":
        rule = None  # nothing to break: plain text was asked for
    language = writing.asked_language(messages)
    host = host_of(url) if url else "your website"
    found: list[list[str]] = []

    def candidates() -> list[str]:  # read the data blocks only when a draft needs them
        if not found:
            found.append(writing.evidence_candidates(messages))
        return found[0]

    def draft(index: int, behave: bool = False) -> writing.Draft:
        if rule is not None and rule != "no_json" and not behave:
            return writing.misbehaving(rule, host, candidates(), language, index)
        if config.content is not None:
            return writing.Draft(make_opener(url, config.content), None)
        return writing.good(host, candidates(), language, index)

    cache_key = request.get("prompt_cache_key")
    if kind == "text":
        if rule is None:
            content = make_opener(url, config.content) if language == "en" or config.content else draft(0).opener
        else:
            content = draft(0).opener
        return Answer(url, content, rule, cache_key)
    if rule == "no_json":
        return Answer(url, draft(0, behave=True).opener, rule, cache_key)
    hint = structured.variants_hint(messages)
    if kind == "json_schema":
        schema = request["response_format"]["json_schema"]["schema"]
        text = structured.dumps(structured.fill(schema, draft, hint, language))
    else:
        text = structured.dumps(structured.plain_json(draft, hint))
    return Answer(url, structured.in_prose(text) if kind == "prompt" else text, rule, cache_key)
