"""The retry schedule: backoff by age within [min, max], give-up times, the delay warning."""

from __future__ import annotations

import itertools

import pytest

from fastmta.config import load_config
from fastmta.delivery.schedule import RetrySchedule

ARRIVAL = 1_800_000_000.0
DAY = 86400.0


def tries(schedule: RetrySchedule, until: float) -> list[float]:
    """Attempt times (seconds after arrival) of a message that never gets through."""
    moments, now = [], ARRIVAL
    while not schedule.expired(ARRIVAL, now, is_bounce=False):
        moments.append(now - ARRIVAL)
        now = schedule.next_try(ARRIVAL, now, is_bounce=False)
        if now - ARRIVAL > until:
            break
    return moments


def test_defaults_back_off_from_five_minutes_to_the_maximum() -> None:
    schedule = RetrySchedule()
    first_hour = [t for t in tries(schedule, 3600) if t < 3600]
    assert first_hour == [0, 300, 600, 1200, 2400]
    later = tries(schedule, 6 * 3600)
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert max(gaps) == 4000
    assert all(a <= b for a, b in itertools.pairwise(gaps))


def test_the_last_try_is_at_the_give_up_time_then_it_expires() -> None:
    schedule = RetrySchedule()
    moments = tries(schedule, 10 * DAY)
    assert moments[-1] < 5 * DAY
    assert schedule.next_try(ARRIVAL, ARRIVAL + moments[-1], False) == ARRIVAL + 5 * DAY
    assert schedule.expired(ARRIVAL, ARRIVAL + 5 * DAY, is_bounce=False)
    assert not schedule.expired(ARRIVAL, ARRIVAL + 5 * DAY - 1, is_bounce=False)


def test_bounces_have_their_own_lifetime() -> None:
    schedule = RetrySchedule(bounce_lifetime=DAY)
    assert schedule.expired(ARRIVAL, ARRIVAL + DAY, is_bounce=True)
    assert not schedule.expired(ARRIVAL, ARRIVAL + DAY, is_bounce=False)
    assert schedule.next_try(ARRIVAL, ARRIVAL + DAY - 10, is_bounce=True) == ARRIVAL + DAY


def test_the_delay_warning_is_due_once_after_its_time_and_never_for_bounces() -> None:
    schedule = RetrySchedule(delay_warning=4 * 3600)
    late = ARRIVAL + 4 * 3600
    assert not schedule.delay_warning_due(ARRIVAL, late - 1, is_bounce=False, already_warned=False)
    assert schedule.delay_warning_due(ARRIVAL, late, is_bounce=False, already_warned=False)
    assert not schedule.delay_warning_due(ARRIVAL, late, is_bounce=False, already_warned=True)
    assert not schedule.delay_warning_due(ARRIVAL, late, is_bounce=True, already_warned=False)
    off = RetrySchedule(delay_warning=0)
    assert not off.delay_warning_due(ARRIVAL, ARRIVAL + 9 * DAY, is_bounce=False,
                                     already_warned=False)


def test_settings_come_from_the_config() -> None:
    config = load_config(overrides={"retry_min_backoff": "1m", "retry_max_backoff": "2h",
                                    "max_queue_lifetime": "3d", "bounce_queue_lifetime": "1d",
                                    "delay_warning": "0"})
    schedule = RetrySchedule.from_config(config)
    assert schedule == RetrySchedule(60, 7200, 3 * DAY, DAY, 0)
    assert schedule.next_try(ARRIVAL, ARRIVAL, False) == ARRIVAL + 60


def test_an_unusable_schedule_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        RetrySchedule(min_backoff=0)
    with pytest.raises(ValueError, match="must not be smaller"):
        RetrySchedule(min_backoff=600, max_backoff=300)
