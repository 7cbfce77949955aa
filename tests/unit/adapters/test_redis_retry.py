"""The one retry policy for Redis that is briefly not usable (the limiter's and the duplicate
index's): doubling waits up to a cap, an optional end, jitter, a hook that may stop it, and
errors that are bugs raised at once."""

from __future__ import annotations

import pytest
import redis

from chalicelib.adapters.redis_retry import UNAVAILABLE, retry_while_unavailable


class Down:
    """A call whose Redis fails ``times`` times with ``error``, then answers."""

    def __init__(self, times: int, error: Exception | None = None) -> None:
        self.times, self.calls = times, 0
        self.error = error or redis.ConnectionError("Connection refused")

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return "answer"


def test_waits_double_up_to_the_cap_and_are_counted():
    sleeps: list[float] = []
    call = Down(times=5)
    assert retry_while_unavailable(call, initial=0.25, maximum=2.0, sleep=sleeps.append) == ("answer", 5.75)
    assert sleeps == [0.25, 0.5, 1.0, 2.0, 2.0] and call.calls == 6


def test_after_the_attempts_the_last_error_is_raised():
    sleeps: list[float] = []
    call = Down(times=10, error=redis.TimeoutError("slow"))
    with pytest.raises(redis.TimeoutError):
        retry_while_unavailable(call, initial=0.25, maximum=2.0, attempts=3, sleep=sleeps.append)
    assert call.calls == 3 and sleeps == [0.25, 0.5]  # no wait after the last attempt


@pytest.mark.parametrize("error", [redis.ResponseError("ERR wrong number of arguments"), ValueError("bug")])
def test_errors_that_are_bugs_are_raised_at_once(error):
    call = Down(times=1, error=error)
    with pytest.raises(type(error)):
        retry_while_unavailable(call, initial=0.25, maximum=2.0, sleep=lambda s: pytest.fail("slept"))
    assert call.calls == 1


@pytest.mark.parametrize("error", [redis.exceptions.BusyLoadingError("loading"), redis.exceptions.ReadOnlyError("ro"),
                                   redis.exceptions.ClusterDownError("down"), redis.exceptions.TryAgainError("again"),
                                   ConnectionResetError("reset")])
def test_failover_errors_are_waited_out(error):
    assert isinstance(error, UNAVAILABLE)
    answer, _ = retry_while_unavailable(Down(times=1, error=error), initial=0.1, maximum=1.0, sleep=lambda s: None)
    assert answer == "answer"


def test_jitter_shortens_each_wait_within_its_share():
    sleeps: list[float] = []
    retry_while_unavailable(Down(times=40), initial=0.2, maximum=5.0, jitter=0.5, sleep=sleeps.append)
    capped = [min(0.2 * 2 ** i, 5.0) for i in range(40)]
    assert all(0.5 * cap <= slept <= cap for slept, cap in zip(sleeps, capped, strict=True))
    assert len({round(s / c, 6) for s, c in zip(sleeps, capped, strict=True)}) > 1  # not one fixed factor


def test_the_hook_sees_each_failure_and_may_stop_the_retries():
    seen: list[tuple[int, str, float]] = []

    def before_sleep(attempt: int, exc: BaseException, pause: float) -> None:
        seen.append((attempt, type(exc).__name__, pause))
        if attempt == 3:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        retry_while_unavailable(Down(times=10), initial=0.5, maximum=4.0, sleep=lambda s: None,
                                before_sleep=before_sleep)
    assert seen == [(1, "ConnectionError", 0.5), (2, "ConnectionError", 1.0), (3, "ConnectionError", 2.0)]


def test_attempts_below_one_are_refused():
    with pytest.raises(ValueError):
        retry_while_unavailable(Down(times=0), initial=0.1, maximum=1.0, attempts=0)
