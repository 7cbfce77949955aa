"""The ingest's quick thread switches: the interpreter's switch interval is lowered while at least
one ingest runs in the process, and the interval from before is put back after the last."""

from __future__ import annotations

import sys

import pytest

from chalicelib.jobs import ingest


def test_the_switch_interval_is_quick_while_ingests_run_and_restored_after_the_last():
    before = sys.getswitchinterval()
    switches = ingest._QuickSwitches()
    try:
        sys.setswitchinterval(0.004)
        switches.enter()
        assert sys.getswitchinterval() == pytest.approx(ingest.SWITCH_INTERVAL_S) and ingest.SWITCH_INTERVAL_S < 0.004
        switches.enter()  # a second ingest in the same process
        switches.leave()
        assert sys.getswitchinterval() == pytest.approx(ingest.SWITCH_INTERVAL_S)  # the first still runs
        switches.leave()
        assert sys.getswitchinterval() == pytest.approx(0.004)
    finally:
        sys.setswitchinterval(before)
