import random

import pytest

from geventsched.dispatch import (STRATEGIES, ChannelTable, get_strategy, hashed, least_loaded, random_choice,
                                  round_robin)
from geventsched.errors import ConfigError
from geventsched.protocol import Job


def table_of(*caps):
    table = ChannelTable()
    for i, cap in enumerate(caps):
        table.add(f"c{i}", f"w{i}", cap)
    return table


def loads(table):
    return {channel.name: channel.load for channel in table.order}


def fill(table, strategy, job=Job("1", "t")):
    """Acquire whatever ``strategy`` picks until it returns None; return the names picked."""
    picked = []
    while (channel := strategy(table, job)) is not None:
        assert channel.load < channel.cap
        table.acquire(channel)
        picked.append(channel.name)
        assert len(picked) <= table.total_cap
    return picked


def test_add_remove_acquire_release_keep_totals():
    table = table_of(2, 3)
    assert (len(table), table.total_cap, table.total_load, table.free_slots()) == (2, 5, 0, 5)
    c0, c1 = table.get("c0"), table.get("c1")
    table.acquire(c0)
    table.acquire(c0)
    table.acquire(c1)
    assert loads(table) == {"c0": 2, "c1": 1}
    assert (table.total_load, table.free_slots()) == (3, 2)
    table.release(c0)
    assert (c0.load, table.total_load) == (1, 2)
    table.add("c1", "w9", 5)  # re-adding updates worker and cap, keeps the load
    assert (c1.worker, c1.cap, c1.load, table.total_cap, len(table)) == ("w9", 5, 1, 7, 2)
    assert table.remove("c1") is c1 and "c1" not in table
    assert (table.total_cap, table.total_load, table.free_slots()) == (2, 1, 1)
    assert table.remove("c1") is None


def test_release_is_a_no_op_at_zero_and_after_removal():
    table = table_of(2, 2)
    c0 = table.get("c0")
    table.release(c0)
    assert (c0.load, table.total_load) == (0, 0)
    table.acquire(c0)
    table.remove("c0")
    table.add("c0", "w0", 2)
    table.release(c0)  # the old channel object: must not touch the new one
    assert (table.get("c0").load, table.total_load) == (0, 0)
    assert table.least_loaded() is not None


def test_free_slots_never_negative_when_cap_shrinks():
    table = table_of(3)
    for _ in range(3):
        table.acquire(table.get("c0"))
    table.add("c0", "w0", 1)
    assert table.free_slots() == 0
    assert table.least_loaded() is None


def test_least_loaded_picks_min_load_and_respects_cap():
    table = table_of(3, 1, 2)
    assert fill(table, least_loaded)[:3] == ["c0", "c1", "c2"]
    assert loads(table) == {"c0": 3, "c1": 1, "c2": 2}
    assert table.free_slots() == 0


def test_least_loaded_recovers_after_release():
    table = table_of(1, 1)
    fill(table, least_loaded)
    assert table.least_loaded() is None
    table.release(table.get("c1"))
    assert table.least_loaded() is table.get("c1")


def test_empty_table_gives_no_channel_for_every_strategy():
    for strategy in STRATEGIES.values():
        assert strategy(ChannelTable(), Job("1", "t")) is None


@pytest.mark.parametrize("jobs, channels", [(10, 3), (100, 7), (7, 10), (1000, 1000)])
def test_least_loaded_spreads_jobs_evenly(jobs, channels):
    table = table_of(*[jobs] * channels)
    for _ in range(jobs):
        table.acquire(table.least_loaded())
    spread = loads(table).values()
    assert max(spread) - min(spread) <= 1 and sum(spread) == jobs


def test_least_loaded_matches_brute_force_under_random_acquire_release():
    rng = random.Random(1234)
    table = table_of(*[rng.randint(0, 5) for _ in range(12)])
    channels = list(table.order)
    for _ in range(5000):
        if rng.random() < 0.55:
            chosen = table.least_loaded()
            room = [c for c in channels if c.load < c.cap]
            if not room:
                assert chosen is None
                continue
            assert chosen.load < chosen.cap and chosen.load == min(c.load for c in room)
            table.acquire(chosen)
        else:
            table.release(rng.choice(channels))
        assert table.total_load == sum(c.load for c in channels)


def test_round_robin_cycles_in_order_and_skips_full():
    table = table_of(9, 9, 9)
    assert [round_robin(table, None).name for _ in range(7)] == ["c0", "c1", "c2", "c0", "c1", "c2", "c0"]
    table = table_of(1, 0, 3)
    assert fill(table, round_robin) == ["c0", "c2", "c2", "c2"]


def test_random_choice_never_returns_a_full_channel():
    random.seed(7)
    table = table_of(*[1] * 20, 50)
    picked = fill(table, random_choice)
    assert len(picked) == 70 and picked.count("c20") == 50


def test_hashed_is_stable_per_key_and_moves_on_when_full():
    table = table_of(*[2] * 5)
    by_id, by_key = Job("job-1", "t"), Job("job-2", "t", key="user-9")
    first = hashed(table, by_id)
    assert all(hashed(table, by_id) is first for _ in range(5))
    assert hashed(table, Job("other", "t", key="user-9")) is hashed(table, by_key)
    assert len({hashed(table, Job(str(i), "t")).name for i in range(100)}) == 5
    table.acquire(first)
    table.acquire(first)
    nxt = table.order[(table.order.index(first) + 1) % 5]
    assert hashed(table, by_id) is nxt
    assert fill(table, hashed, by_id).count(first.name) == 0


def test_get_strategy_by_name():
    assert get_strategy("least-loaded") is least_loaded and get_strategy("hash") is hashed
    with pytest.raises(ConfigError, match="unknown strategy 'fastest'"):
        get_strategy("fastest")
