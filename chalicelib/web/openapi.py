"""The OpenAPI document of the API: `openapi.yaml` beside this file, read once per container."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

SPEC_PATH = Path(__file__).with_name("openapi.yaml")


@lru_cache(maxsize=1)
def document() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
