"""EMF lines checked against the Embedded Metric Format specification (unit and integration tests)."""

from __future__ import annotations

import json

import jsonschema

# The EMF specification's structure of the `_aws` envelope (CloudWatch "Specification: Embedded
# metric format"): a Timestamp in epoch milliseconds and 1..n CloudWatchMetrics directives, each
# with a Namespace, Dimensions (arrays of at most 30 names, each a member of the root) and at
# most 100 Metrics with a Name and an optional Unit of the standard units.
UNITS = ["Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
         "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
         "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
         "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"]
EMF_SCHEMA = {
    "type": "object",
    "required": ["_aws"],
    "properties": {"_aws": {
        "type": "object",
        "required": ["Timestamp", "CloudWatchMetrics"],
        "properties": {
            "Timestamp": {"type": "integer", "minimum": 0},
            "CloudWatchMetrics": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["Namespace", "Dimensions", "Metrics"],
                "properties": {
                    "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "Dimensions": {"type": "array", "items": {
                        "type": "array", "maxItems": 30, "items": {"type": "string", "minLength": 1}}},
                    "Metrics": {"type": "array", "maxItems": 100, "items": {
                        "type": "object", "required": ["Name"],
                        "properties": {"Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                       "Unit": {"enum": UNITS},
                                       "StorageResolution": {"enum": [1, 60]}}}},
                },
            }},
        },
    }},
}


def emf_documents(text: str) -> list[dict]:
    """Every EMF line of `text`, each checked against the specification and its own references."""
    documents = []
    for line in text.splitlines():
        document = json.loads(line)
        if "_aws" not in document:
            continue
        jsonschema.validate(document, EMF_SCHEMA)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                assert all(isinstance(document.get(name), str) for name in dimension_set)
            for metric in directive["Metrics"]:
                value = document[metric["Name"]]
                values = value if isinstance(value, list) else [value]
                assert values and len(values) <= 100 and all(isinstance(v, int | float) for v in values)
        documents.append(document)
    return documents


def total(document: dict, name: str) -> float:
    """A metric's value in a document: Powertools writes every value as a list."""
    value = document[name]
    return sum(value) if isinstance(value, list) else value
