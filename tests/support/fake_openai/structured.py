"""Structured answers: ``response_format`` as OpenAI checks and answers it, and JSON asked for in
the prompt, as a chatty model answers that.

``{"type": "json_schema", "json_schema": {"name", "strict", "schema"}}``
    The name must match ``^[a-zA-Z0-9_-]{1,64}$``. With ``strict: true`` the schema must follow
    OpenAI's strict rules, else a 400 naming ``response_format`` (the root is an object; every
    object has ``additionalProperties: false`` and lists every property in ``required``). The
    answer is compact JSON matching the schema (:func:`fill`): ``opener``/``evidence`` strings
    (evidence null when the draft has none and the schema allows null), arrays of
    ``n`` items where ``n`` is a variants hint in the prompt within ``minItems``..``maxItems``,
    else ``maxItems``, else ``minItems``, else the hint, else 1; ``$ref`` to ``#/$defs/...`` and
    ``anyOf`` are followed.
``{"type": "json_object"}``
    Needs the word "json" in a message (400 naming ``messages`` otherwise, as OpenAI answers);
    the answer is ``{"opener", "evidence"}``, or ``{"openers": [...]}`` when the prompt asks for
    several variants.
``{"type": "text"}`` or none
    Plain text, unless the prompt asks for JSON (:func:`asks_for_json`: the system and user
    messages, outside the ``<page>``/``<prospect_data>`` blocks, say "JSON", "opener" and
    "evidence"): then the JSON comes inside a sentence of prose.

The variants hint is "3 openers" / "three different openers" / "variants: 3" in a system or user
message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from .responses import APIError
from .tokens import message_text
from .writing import Draft, instruction_texts

Kind = Literal["text", "json_schema", "json_object", "prompt"]

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_HINT = re.compile(
    r"\b([1-9]|one|two|three|four|five)\s+(?:different\s+|distinct\s+|alternative\s+)?(?:openers|variants)\b"
    r"|\bvariants\s*[:=]\s*([1-9])\b",
    re.IGNORECASE,
)


def _texts(messages: Sequence[Any]) -> list[str]:
    return [message_text(m) for m in messages
            if isinstance(m, dict) and m.get("role") in ("system", "developer", "user")]


def asks_for_json(messages: Sequence[Any]) -> bool:
    """Whether the system and user messages, outside their data blocks, ask for the ``{"opener",
    "evidence"}`` JSON in words: they say "JSON", "opener" and "evidence"."""
    text = "\n".join(instruction_texts(messages))
    return bool(re.search(r"\bjson\b", text, re.IGNORECASE)) and "opener" in text.lower() and "evidence" in text.lower()


def variants_hint(messages: Sequence[Any]) -> int | None:
    """How many openers the prompt asks for, if it says so (outside the data blocks)."""
    found = None
    for text in instruction_texts(messages):
        for match in _HINT.finditer(text):
            word = (match.group(1) or match.group(2)).lower()
            found = _COUNT_WORDS.get(word) or int(word)
    return found


def refuse(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, code, param)


def kind_of(request: Mapping[str, Any], supported: bool) -> Kind:
    """What the request's answer must be (APIError 400 for a ``response_format`` it cannot have)."""
    fmt = request.get("response_format")
    messages = request["messages"]
    if fmt is None:
        return "prompt" if asks_for_json(messages) else "text"
    type_ = fmt.get("type") if isinstance(fmt, dict) else None
    if not supported:
        raise refuse(f"Invalid parameter: 'response_format' of type '{type_}' is not supported with this model.",
                     "response_format")
    if type_ not in ("text", "json_object", "json_schema"):
        raise refuse(f"Invalid value: '{type_}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
                     "response_format.type", "invalid_value")
    if type_ == "text":
        return "prompt" if asks_for_json(messages) else "text"
    if type_ == "json_object":
        if not any("json" in text.lower() for text in _texts(messages)):
            raise refuse("'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                         "'json_object'.", "messages")
        return "json_object"
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise refuse("Missing required parameter: 'response_format.json_schema'.", "response_format.json_schema",
                     "missing_required_parameter")
    name = spec.get("name")
    if not isinstance(name, str):
        raise refuse("Missing required parameter: 'response_format.json_schema.name'.",
                     "response_format.json_schema.name", "missing_required_parameter")
    if not _NAME.match(name):
        raise refuse(f"Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string "
                     f"that matches the pattern '^[a-zA-Z0-9_-]+$', got {name!r}.",
                     "response_format.json_schema.name", "invalid_value")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise refuse(f"Invalid schema for response_format '{name}': the schema must be a JSON object.",
                     "response_format")
    if spec.get("strict") is True:
        problem = strict_problem(schema)
        if problem:
            raise refuse(f"Invalid schema for response_format '{name}': {problem}", "response_format")
    return "json_schema"


def strict_problem(schema: Mapping[str, Any]) -> str | None:
    """What OpenAI's strict mode would reject in ``schema``, or None."""
    if schema.get("type") != "object":
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{schema.get('type')}\"'."

    def walk(node: Any, context: tuple[str, ...]) -> str | None:
        if not isinstance(node, dict):
            return None
        types = node.get("type")
        types = set(types) if isinstance(types, list) else {types}
        if "object" in types or "properties" in node:
            if node.get("additionalProperties") is not False:
                return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
            properties = node.get("properties") or {}
            required = node.get("required") or []
            missing = [key for key in properties if key not in required]
            if missing:
                return (f"In context={context}, 'required' is required to be supplied and to be an array including "
                        f"every key in properties. Missing '{missing[0]}'.")
            for key, sub in properties.items():
                if found := walk(sub, (*context, "properties", key)):
                    return found
        if "items" in node and (found := walk(node["items"], (*context, "items"))):
            return found
        for word in ("anyOf", "$defs", "definitions"):
            subs = node.get(word)
            pairs = enumerate(subs) if isinstance(subs, list) else subs.items() if isinstance(subs, dict) else ()
            for key, sub in pairs:
                if found := walk(sub, (*context, word, str(key))):
                    return found
        return None

    return walk(schema, ())


def fill(schema: Mapping[str, Any], draft: Callable[[int], Draft], hint: int | None, language: str) -> Any:
    """A value matching ``schema`` whose openers and evidence come from ``draft(variant_index)``."""

    def resolve(node: Any) -> Mapping[str, Any]:
        seen = 0
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str) and seen < 20:
            target: Any = schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target.get(part, {}) if isinstance(target, Mapping) and part else target
            node, seen = target, seen + 1
        return node if isinstance(node, Mapping) else {}

    def types_of(node: Mapping[str, Any]) -> list[str]:
        types = node.get("type")
        if isinstance(types, str):
            return [types]
        if isinstance(types, list):
            return [t for t in types if isinstance(t, str)]
        return ["object"] if "properties" in node else []

    def value(node: Any, name: str | None, index: int) -> Any:
        node = resolve(node)
        if "const" in node:
            return node["const"]
        if isinstance(node.get("enum"), list) and node["enum"]:
            return node["enum"][0]
        options = node.get("anyOf") or node.get("oneOf")
        if isinstance(options, list) and options:
            options = [resolve(o) for o in options]
            nullable = any(types_of(o) == ["null"] for o in options)
            if name == "evidence" and nullable and draft(index).evidence is None:
                return None
            return value(next((o for o in options if types_of(o) != ["null"]), options[0]), name, index)
        types = types_of(node)
        if "object" in types:
            return {key: value(sub, key, index) for key, sub in (node.get("properties") or {}).items()}
        if "array" in types:
            return [value(node.get("items", {}), _singular(name), i) for i in range(_count(node, hint))]
        if "string" in types:
            if name == "evidence":
                evidence = draft(index).evidence
                return None if evidence is None and "null" in types else evidence or ""
            if name == "language":
                return language
            if name in ("opener", "text", "line") or name is None:
                return draft(index).opener
            return ""
        if "integer" in types or "number" in types:
            return node.get("minimum", 0)
        if "boolean" in types:
            return False
        return None

    return value(schema, None, 0)


def _singular(name: str | None) -> str | None:
    return "opener" if name in ("openers", "variants") else name


def _count(node: Mapping[str, Any], hint: int | None) -> int:
    lo, hi = node.get("minItems"), node.get("maxItems")
    if hint is not None and (lo is None or hint >= lo) and (hi is None or hint <= hi):
        return hint
    for bound in (hi, lo, hint):
        if isinstance(bound, int) and bound > 0:
            return bound
    return 1


def plain_json(draft: Callable[[int], Draft], hint: int | None) -> Any:
    """The JSON of a ``json_object`` or in-prompt request: one object, or ``openers`` for variants."""
    if hint is not None and hint > 1:
        return {"openers": [{"opener": d.opener, "evidence": d.evidence} for d in map(draft, range(hint))]}
    first = draft(0)
    return {"opener": first.opener, "evidence": first.evidence}


def dumps(value: Any) -> str:
    """JSON as OpenAI's structured outputs send it: compact, UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def in_prose(text: str) -> str:
    """JSON the way a chatty model wraps it when asked in words."""
    return f"Sure! Here is the opener you asked for, as JSON: {text} Let me know if you would like another angle."
