"""Coarse per-connection timers, on Twisted's deterministic Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from edge.net.timers import RESOLUTION, CoarseTimers


def test_deadlines_fire_in_order_never_early_and_at_most_one_slot_late():
    clock = Clock()
    timers = CoarseTimers(clock)
    fired: list[tuple[str, float]] = []
    timers.later(5.0, lambda: fired.append(("five", clock.seconds())))
    timers.later(1.04, lambda: fired.append(("one", clock.seconds())))  # earlier than the timer already set
    cancelled = timers.later(2.0, lambda: fired.append(("cancelled", clock.seconds())))
    cancelled.cancel()
    assert not cancelled.active()
    for _ in range(100):
        clock.advance(0.01)
    clock.advance(RESOLUTION)
    assert [name for name, _ in fired] == ["one"]
    assert 1.04 <= fired[0][1] <= 1.04 + 2 * RESOLUTION
    clock.advance(4.0)
    clock.advance(RESOLUTION)
    assert [name for name, _ in fired] == ["one", "five"]
    assert 5.0 <= fired[1][1] <= 5.0 + 2 * RESOLUTION
    assert not clock.getDelayedCalls()  # nothing pending: no timer left in the reactor


def test_many_deadlines_share_one_reactor_timer_and_a_failing_one_spares_the_rest():
    clock = Clock()
    timers = CoarseTimers(clock)
    fired = []

    def boom() -> None:
        raise RuntimeError("handler bug")

    timers.later(3.0, boom)
    for i in range(1000):
        timers.later(3.0 + (i % 5) * 0.01, lambda i=i: fired.append(i))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(3.2)
    assert sorted(fired) == list(range(1000))


def test_cancelled_deadlines_are_not_kept_until_their_slot_comes_round():
    """An hour-long idle deadline per connection, cancelled when the connection ends, is freed at once."""
    clock = Clock()
    timers = CoarseTimers(clock)
    long_lived = [timers.later(3600.0, lambda: None) for _ in range(3)]
    for second in range(100):  # 100 short connections a second for 100 seconds
        for _ in range(100):
            timers.later(3600.0, lambda: None).cancel()
        clock.advance(1.0)
    assert timers.pending() <= 2 * len(long_lived) + 2
    assert len(timers.keys) <= 110  # one per slot used (here one a second), not one per connection
    assert sum(d.active() for d in long_lived) == 3
    fired = []
    deadline = timers.later(1.0, lambda: fired.append(1))
    for _ in range(50):  # cancelled neighbours in the same slot do not take a live deadline with them
        timers.later(1.0, lambda: None).cancel()
    clock.advance(1.0 + RESOLUTION)
    assert fired == [1] and not deadline.active()
