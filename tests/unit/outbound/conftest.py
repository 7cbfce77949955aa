"""Every outbound unit test runs under `local_connections_only`: connects are recorded (the
`connections` fixture) and any to an address off this machine is refused before a packet leaves."""

from __future__ import annotations

import pytest

from tests.support.fake_site import local_connections_only


@pytest.fixture(autouse=True)
def connections():
    with local_connections_only() as attempts:
        yield attempts
