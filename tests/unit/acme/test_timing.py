"""edge.acme.timing: when a certificate is due and when to check next.  Plain unit tests."""

from __future__ import annotations

import datetime

from edge.acme.timing import RenewalInfo, due_at, next_check, pick_in_window

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def info(start, end, chosen=None, ask_again=T0) -> RenewalInfo:
    return RenewalInfo(1, start, end, chosen or start, ask_again)


def test_without_renewal_information_a_third_of_the_lifetime_remains():
    assert due_at(T0, T0 + 90 * DAY) == T0 + 60 * DAY
    assert due_at(T0, T0 + 6 * DAY) == T0 + 4 * DAY


def test_the_cas_window_moves_renewal_earlier_never_later():
    assert due_at(T0, T0 + 90 * DAY, info(T0 + 10 * DAY, T0 + 11 * DAY)) == T0 + 10 * DAY
    assert due_at(T0, T0 + 90 * DAY, info(T0 + 80 * DAY, T0 + 81 * DAY)) == T0 + 60 * DAY


def test_a_window_open_when_the_certificate_was_issued_is_ignored():
    assert due_at(T0, T0 + 90 * DAY, info(T0 - 2 * DAY, T0 - DAY)) == T0 + 60 * DAY
    assert due_at(T0, T0 + 90 * DAY, info(T0 - DAY, T0 + DAY)) == T0 + 60 * DAY


def test_the_moment_picked_lies_in_the_window():
    assert pick_in_window(T0, T0 + DAY, 0.5) == T0 + DAY / 2
    assert pick_in_window(T0, T0 - DAY, 0.5) == T0


def test_the_next_check_is_the_earliest_reason():
    now = T0
    assert next_check(now, 3600, [], [], []) == 3600
    assert next_check(now, 3600, [now + datetime.timedelta(seconds=120)], [], []) == 120  # 2-minute certificates
    assert next_check(now, 3600, [], [now + datetime.timedelta(seconds=30)], [5.0]) == 5.0
    assert next_check(now, 3600, [now - DAY], [], []) == 1.0  # past: soon, never a busy loop


def test_renewal_information_round_trips_through_json():
    kept = info(T0, T0 + DAY, T0 + DAY / 3, T0 + DAY / 4)
    assert RenewalInfo.from_json(kept.to_json()) == kept
