"""The README's configuration table is what a newcomer reads: every default it states must be
the one Settings.from_env uses when the variable is not set, and every setting must be in it."""

from __future__ import annotations

import dataclasses
import re

import pytest

from chalicelib.settings import Settings
from tests.support.util import ROOT

# Rows whose default is said in words, not as a value: each is checked where it is computed.
IN_WORDS = {
    "RUNNER_VISIBILITY_S": "the local runner's, not the app's (infra/runner.py)",
    "RUNNER_SWEEP_S": "the local runner's, not the app's (infra/runner.py)",
    "CHUNK_QUEUE_URL": "LocalStack's queue URLs (tests/integration/adapters)",
    "DLQ_URL": "LocalStack's queue URLs (tests/integration/adapters)",
    "INGEST_QUEUE_URL": "LocalStack's queue URLs (tests/integration/adapters)",
    "AWS_ENDPOINT_URL": "LocalStack locally, unset on AWS",
    "OPENAI_BASE_URL": "OpenAI's own",
    "OPENAI_API_KEY": "no default",
    "OPENAI_DUMMY_MODE": "true when there is no key (tests/unit/test_settings_and_logs.py)",
    "MODEL_PRICES": "the built-in table (chalicelib/settings.py DEFAULT_PRICES)",
    "CHUNKS_PER_JOB": "half of MAX_CONCURRENT_JOBS (Settings.chunk_window)",
    "OUTBOUND_ALLOW_NETWORKS": "empty, and refused by the prod stage",
    "PAGE_CONTEXT_DEFAULT": "true, false under make test",
}
# Not written in the table on purpose (no user would set them), each with its reason.
UNDOCUMENTED = {
    "aws_region": "AWS_REGION / AWS_DEFAULT_REGION, the AWS SDK's own variables",
    "presign_expires_s": "how long a presigned URL lives: an implementation detail",
}
UNSET = {"unset", "empty", "—"}


def documented_defaults() -> dict[str, str]:
    """{VARIABLE: default as written} of the README's configuration table (rows naming several
    variables, `A` / `B`, pair them with as many defaults, or share one)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z0-9_]+)`", cells[0])
        values = [v.strip() for v in cells[1].split(" / ")] if " / " in cells[1] else [cells[1]] * len(names)
        rows.update(zip(names, values if len(values) == len(names) else [cells[1]] * len(names), strict=True))
    return rows


def test_the_table_lists_every_setting():
    documented = {name.lower() for name in documented_defaults()}
    fields = {f.name for f in dataclasses.fields(Settings)}
    missing = sorted(fields - documented - set(UNDOCUMENTED))
    assert missing == [], f"settings the README does not document: {missing}"


@pytest.mark.parametrize("name,written", sorted(documented_defaults().items()))
def test_a_documented_default_is_the_real_one(name, written):
    if name in IN_WORDS:
        return
    actual = getattr(Settings.from_env({}), name.lower())
    literal = re.fullmatch(r"`([^`]*)`", written)
    if written.lower() in UNSET:
        assert actual in (0, "", None, ()), (name, actual)
    elif literal:
        value = literal.group(1)
        if isinstance(actual, bool):
            assert actual == (value == "true"), (name, actual)
        elif isinstance(actual, tuple):  # a range: "2000-3000"
            assert "-".join(str(v) for v in actual) == value, (name, actual)
        elif isinstance(actual, int | float):
            assert actual == float(value), (name, actual, value)
        else:
            assert actual == value, (name, actual, value)
    else:
        pytest.fail(f"{name}: the default {written!r} is neither `a literal` nor unset; say it as one")
