"""The accept counts workers share (balance.py), without processes: the rules of stepping aside."""

from __future__ import annotations

import os
import warnings

from aserve.balance import LEAD, AcceptShares


def test_a_worker_ahead_of_its_least_busy_sibling_steps_aside():
    shares = AcceptShares(4)
    one, two = shares.slot(0), shares.slot(1)
    one.join()
    two.join()
    assert not one.ahead() and not two.ahead()
    one.add(LEAD - 1)
    assert not one.ahead()
    one.add(1)
    assert one.ahead() and not two.ahead()
    two.add(LEAD)
    assert not one.ahead()


def test_alone_or_beside_idle_slots_a_worker_never_steps_aside():
    shares = AcceptShares(4)
    one = shares.slot(0)
    one.join()
    one.add(1000)
    assert not one.ahead()
    two = shares.slot(1)
    two.join()
    two.leave()  # draining: the others do not wait for it
    assert not one.ahead()


def test_a_late_worker_joins_level_with_the_busiest_and_a_dead_one_is_released():
    shares = AcceptShares(4)
    one, two = shares.slot(0), shares.slot(1)
    one.join()
    two.join()
    one.add(500)
    two.add(490)
    late = shares.slot(2)
    late.join()
    assert shares.counts() == [500, 490, 500]  # it does not take every connection to catch up
    assert two.ahead() is False and late.ahead()
    shares.release(0)  # the supervisor, after worker one crashed
    assert shares.counts() == [490, 500]


def test_the_counts_are_shared_with_a_forked_child():
    shares = AcceptShares(2)
    mine = shares.slot(0)
    mine.join()
    with warnings.catch_warnings():  # pytest's own threads: the child only writes and exits
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the worker side: never back into pytest, whatever happens
        try:
            child = shares.slot(1)
            child.join()
            child.add(7)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert shares.counts() == [0, 7]


def test_a_sibling_that_starts_later_is_seen_by_those_already_running():
    # Each worker reads how many slots are in use on every wake-up, not once at its start.
    shares = AcceptShares(8)
    one = shares.slot(0)
    one.join()
    one.add(100)
    assert not one.ahead()  # alone
    late = shares.slot(5)  # the lowest free slot is not always the next one (respawns)
    late.join()
    assert shares.counts() == [100, 100]
    late.add(LEAD)
    assert late.ahead() and not one.ahead()
    shares.release(5)
    assert shares.counts() == [100] and not one.ahead()
