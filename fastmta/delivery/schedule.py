"""When to try a message again, when to give up on it, and when to warn its sender.

Retries back off with the message's age, as Postfix's queue manager does: after a failed
attempt the next one waits as long as the message has already been queued, clamped to
[`retry_min_backoff`, `retry_max_backoff`] (defaults 300 s and 4000 s).  So a message is
tried at about 0, 5, 10, 20, 40 minutes, then every 67 minutes: a few tries in the first
hour, then backing off, in the spirit of RFC 5321 4.5.4.1 (which asks for at least 30
minutes between retries to one destination once it has failed, and a give-up time of at
least 4-5 days).  `max_queue_lifetime` (5 days) ends the retries with a DSN; bounces (null
sender) use `bounce_queue_lifetime` and are dropped instead, since nobody can be told.

Invariants:
- Every input is a time in seconds since the epoch passed in by the caller: the schedule
  never reads a clock, so tests drive it with a fake one.
- A retry is never scheduled past the give-up time: the last try happens at it, then the
  message expires.  The next try is stored by the spool as the file's mtime, so a restart
  keeps the schedule.
- A delay warning (RFC 3464 Action: delayed) is due once per message, after
  `delay_warning` seconds (0: never), and never for a bounce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastmta.config import Config

__all__ = ["RetrySchedule"]


@dataclass(frozen=True)
class RetrySchedule:
    """Backoff, lifetimes and the delay warning, in seconds."""

    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    max_lifetime: float = 5 * 86400.0
    bounce_lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0  # 0: never warn

    def __post_init__(self) -> None:
        if self.min_backoff <= 0:
            raise ValueError("retry_min_backoff must be positive; the default is 300 s")
        if self.max_backoff < self.min_backoff:
            raise ValueError("retry_max_backoff must not be smaller than retry_min_backoff")

    @classmethod
    def from_config(cls, config: Config) -> RetrySchedule:
        return cls(min_backoff=config.retry_min_backoff, max_backoff=config.retry_max_backoff,
                   max_lifetime=config.max_queue_lifetime,
                   bounce_lifetime=config.bounce_queue_lifetime,
                   delay_warning=config.delay_warning)

    def lifetime(self, is_bounce: bool) -> float:
        """How long a message may stay queued; `is_bounce`: its sender is the null path."""
        return self.bounce_lifetime if is_bounce else self.max_lifetime

    def give_up_at(self, arrival: float, is_bounce: bool) -> float:
        return arrival + self.lifetime(is_bounce)

    def expired(self, arrival: float, now: float, is_bounce: bool) -> bool:
        """Whether recipients still undelivered at `now` should fail instead of waiting."""
        return now >= self.give_up_at(arrival, is_bounce)

    def backoff(self, arrival: float, now: float) -> float:
        """Seconds to wait after a failed attempt at `now`: the age, clamped."""
        return min(max(now - arrival, self.min_backoff), self.max_backoff)

    def next_try(self, arrival: float, now: float, is_bounce: bool) -> float:
        """When to try again after a transient failure at `now` (never past the give-up
        time, so the final try is made when the lifetime ends)."""
        wanted = now + self.backoff(arrival, now)
        return max(now, min(wanted, self.give_up_at(arrival, is_bounce)))

    def delay_warning_due(self, arrival: float, now: float, *, is_bounce: bool,
                          already_warned: bool) -> bool:
        """Whether to send the one delay DSN now (the message is still being retried)."""
        if self.delay_warning <= 0 or is_bounce or already_warned:
            return False
        return now - arrival >= self.delay_warning
