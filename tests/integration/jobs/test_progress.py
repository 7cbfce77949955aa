"""`progress` rounds half up (PostgreSQL's round() on numeric), the rule the README states and
every check uses; Python's round() would round the halves below to even."""

from __future__ import annotations

import pytest

from chalicelib.adapters.db import PROGRESS
from tests.support.e2e import progress_percent


@pytest.mark.parametrize("done, total, expected", [
    (305, 1000, 31),  # 30.5: the case that once failed an e2e run (Python's round gives 30)
    (1, 8, 13),  # 12.5
    (5, 200, 3),  # 2.5
    (1, 3, 33),
    (2, 3, 67),
    (0, 7, 0),
    (7, 7, 100),
    (0, 0, 0),
])
def test_progress_rounds_half_up_in_sql_and_in_the_test_helper(conn, done, total, expected):
    sql = f"SELECT {PROGRESS.format(done='%s')} AS p FROM (SELECT %s::int AS total_rows) j"
    assert conn.execute(sql, (done, total)).fetchone()["p"] == expected
    assert progress_percent(done, total) == expected
