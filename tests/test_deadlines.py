"""Time limits on one timer (deadlines.py): who gets thrown at, and when nobody does."""

import gevent
import pytest

from geventsched.deadlines import TICK, DeadlineExceeded, Deadlines


def limited(deadlines, seconds, work, outcome, key):
    """Run ``work()`` under a limit of ``seconds``; record 'done' or 'expired' under ``key``."""
    me = gevent.getcurrent()
    slot = deadlines.arm(me, seconds)
    try:
        work()
        outcome[key] = "done"
    except DeadlineExceeded as exc:
        slot = None
        outcome[key] = ("expired", exc.seconds)
    finally:
        if slot is not None:
            deadlines.disarm(me, slot)


def test_only_the_greenlets_past_their_limit_are_stopped():
    deadlines, outcome = Deadlines(), {}
    greenlets = [gevent.spawn(limited, deadlines, limit, lambda s=sleep: gevent.sleep(s), outcome, i)
                 for i, (limit, sleep) in enumerate([(0.1, 5), (0.3, 0.01), (0.2, 5), (5, 0.25), (0.15, 0.0)])]
    gevent.joinall(greenlets, timeout=3, raise_error=True)
    assert outcome == {0: ("expired", 0.1), 1: "done", 2: ("expired", 0.2), 3: "done", 4: "done"}
    assert not deadlines._buckets
    gevent.sleep(3 * TICK)
    assert deadlines._timer is None  # nothing armed: the timer stopped at its next tick


def test_a_limit_fires_after_its_deadline_and_within_a_tick():
    deadlines, outcome = Deadlines(), {}
    started = gevent.get_hub().loop.now()
    gevent.spawn(limited, deadlines, 0.2, lambda: gevent.sleep(5), outcome, "job").join(timeout=3)
    elapsed = gevent.get_hub().loop.now() - started
    assert outcome == {"job": ("expired", 0.2)}
    assert 0.2 <= elapsed + 0.001, elapsed
    assert elapsed < 0.2 + TICK + 1.0  # a hang guard, not a timing claim


def test_the_next_job_of_the_same_greenlet_does_not_inherit_a_limit():
    deadlines, outcome = Deadlines(), {}

    def runner():
        limited(deadlines, 0.1, lambda: gevent.sleep(0.01), outcome, "short")  # done well in time
        limited(deadlines, 5, lambda: gevent.sleep(0.3), outcome, "next")      # outlives the first limit

    gevent.spawn(runner).join(timeout=3)
    assert outcome == {"short": "done", "next": "done"}


def test_a_blocking_call_in_the_thread_pool_is_abandoned_at_its_limit():
    import time

    deadlines, outcome = Deadlines(), {}
    pool = gevent.get_hub().threadpool
    gevent.spawn(limited, deadlines, 0.1, lambda: pool.apply(time.sleep, (0.5,)), outcome, "blocking").join(timeout=3)
    assert outcome == {"blocking": ("expired", 0.1)}


def test_an_exception_handler_for_errors_does_not_swallow_it():
    deadlines, outcome = Deadlines(), {}

    def careless():
        try:
            gevent.sleep(5)
        except Exception:  # user code that catches every error
            pytest.fail("DeadlineExceeded must not be an Exception")

    gevent.spawn(limited, deadlines, 0.05, careless, outcome, "job").join(timeout=3)
    assert outcome == {"job": ("expired", 0.05)}
