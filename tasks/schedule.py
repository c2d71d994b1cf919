"""Feed schedule: when each feed is due, and what one poll outcome does to its state.

A feed is a small state machine, persisted in the ``feeds`` table (migration 005):

    active  --failure-->  backoff  --N failures or T of failing-->  dead
      ^  <----success----   |                                         |
      |  <------------------+--------------success (revived)----------+
    any --410 Gone--> retired (never polled again, until ``newsflow feeds revive``)

- ``active``: polled every ``poll_interval_s``, which adapts to how often the feed publishes
  (a smoothed rate of new entries per day, bootstrapped from the entries' own dates), never
  below what the feed asks for (``<ttl>``, ``sy:updatePeriod``/``updateFrequency``,
  ``Cache-Control: max-age``, ``Expires``) and within the configured or per-feed bounds.
- ``backoff``: each failure doubles the wait (with jitter) from ``backoff_base`` up to
  ``backoff_cap``.
- ``dead``: after ``dead_after_failures`` failures in a row, or failing for ``dead_after``;
  re-probed every ``dead_probe_interval``; an answer revives it.
- A permanent redirect (every hop 301/308) moves ``fetch_url``; ``feed_url`` stays the identity.

Everything here is a plain function of (previous state, observation, policy, clock, random
source): tests drive it with an injected clock and a seeded ``random.Random``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

ACTIVE, BACKOFF, DEAD, RETIRED = "active", "backoff", "dead", "retired"
STATES = (ACTIVE, BACKOFF, DEAD, RETIRED)

# How fast the smoothed rate forgets: a feed silent for three days has its rate divided by e, so a
# busy feed that falls silent is polled daily after about ten days.
RATE_MEMORY = timedelta(days=3)
# Entries dated within this window of "now" estimate a feed's publishing rate from its own dates.
RATE_WINDOW = timedelta(days=30)
# Aim for about this many new entries per poll: fewer polls of quiet feeds, no missed entries of busy ones.
TARGET_NEW_PER_POLL = 1.0
INTERVAL_JITTER = 0.05  # +-5% on healthy intervals, so feeds added together do not stay in lockstep
BACKOFF_JITTER = 0.25  # backoff delays are drawn from [75%, 100%] of the exponential step

# Fetch outcomes where newsflow sent nothing by its own choice: no failure of the feed.
NOT_REQUESTED = frozenset({"host_postponed"})

SY_PERIODS = {
    "hourly": 3600,
    "daily": 86400,
    "weekly": 7 * 86400,
    "monthly": 30 * 86400,
    "yearly": 365 * 86400,
}


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class SchedulePolicy:
    min_interval: timedelta = timedelta(minutes=5)
    max_interval: timedelta = timedelta(hours=24)
    first_interval: timedelta = timedelta(hours=1)  # before anything is known of a feed
    backoff_base: timedelta = timedelta(minutes=10)
    backoff_cap: timedelta = timedelta(hours=12)
    dead_after_failures: int = 10
    dead_after: timedelta = timedelta(days=7)
    dead_probe_interval: timedelta = timedelta(days=3)

    @classmethod
    def from_settings(cls, settings) -> SchedulePolicy:
        return cls(
            min_interval=timedelta(seconds=settings.feed_min_interval),
            max_interval=timedelta(seconds=settings.feed_max_interval),
            first_interval=timedelta(seconds=settings.feed_first_interval),
            backoff_base=timedelta(seconds=settings.feed_backoff_base),
            backoff_cap=timedelta(seconds=settings.feed_backoff_cap),
            dead_after_failures=settings.feed_dead_after_failures,
            dead_after=timedelta(seconds=settings.feed_dead_after),
            dead_probe_interval=timedelta(seconds=settings.feed_dead_probe_interval),
        )


@dataclass(frozen=True)
class FeedOverride:
    """Per-feed settings from ``feeds.toml`` (seconds): a fixed interval, or tighter bounds."""

    interval_s: int | None = None
    min_interval_s: int | None = None
    max_interval_s: int | None = None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|m|min|mins|h|hr|hrs|hours?|d|days?)?\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Seconds from ``900``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` (feeds.toml intervals)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        unit = (m.group(2) or "s")[0].lower()
        seconds = float(m.group(1)) * _UNIT_SECONDS[unit]
    else:
        raise ValueError(f"not a duration: {value!r} (use seconds, or e.g. '15m', '2h', '1d')")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive: {value!r}")
    return int(seconds)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class FeedSchedule:
    """The persisted scheduling state of one feed (columns of ``feeds``)."""

    state: str = ACTIVE
    state_changed_at: datetime | None = None
    next_due_at: datetime | None = None  # None: due now (never polled)
    poll_interval_s: int | None = None
    hint_interval_s: int | None = None
    fetch_url: str | None = None  # None: fetch feed_url itself
    consecutive_failures: int = 0
    first_failure_at: datetime | None = None
    last_success_at: datetime | None = None
    last_polled_at: datetime | None = None
    last_new_entry_at: datetime | None = None
    new_per_day: float | None = None

    @classmethod
    def from_row(cls, row: Mapping | None) -> FeedSchedule:
        if not row:
            return cls()
        return cls(
            state=row.get("state") or ACTIVE,
            state_changed_at=row.get("state_changed_at"),
            next_due_at=row.get("next_due_at"),
            poll_interval_s=row.get("poll_interval_s"),
            hint_interval_s=row.get("hint_interval_s"),
            fetch_url=row.get("fetch_url"),
            consecutive_failures=int(row.get("consecutive_failures") or 0),
            first_failure_at=row.get("first_failure_at"),
            last_success_at=row.get("last_success_at"),
            last_polled_at=row.get("last_fetched_at"),
            last_new_entry_at=row.get("last_new_entry_at"),
            new_per_day=row.get("new_per_day"),
        )

    def columns(self) -> dict:
        """The ``feeds`` columns this state owns (``last_fetched_at`` is written from the fetch)."""
        return {
            "state": self.state,
            "state_changed_at": self.state_changed_at,
            "next_due_at": self.next_due_at,
            "poll_interval_s": self.poll_interval_s,
            "hint_interval_s": self.hint_interval_s,
            "fetch_url": self.fetch_url,
            "consecutive_failures": self.consecutive_failures,
            "first_failure_at": self.first_failure_at,
            "last_success_at": self.last_success_at,
            "last_new_entry_at": self.last_new_entry_at,
            "new_per_day": self.new_per_day,
        }


@dataclass(frozen=True)
class PollObservation:
    """What one poll of a feed showed, reduced to what scheduling needs."""

    at: datetime
    ok: bool  # a feed came back: parsed, 304, or the same bytes as before
    changed: bool = False  # new bytes that parsed (not 304, not the same hash)
    error_class: str | None = None
    error_message: str | None = None
    status: int | None = None
    new_entries: int = 0
    entries_in_feed: int = 0  # entries in the document (when it was parsed)
    entry_dates: tuple[datetime, ...] = ()  # published/updated dates of the document's entries
    feed_hint_s: int | None = None  # <ttl>, sy:updatePeriod/updateFrequency
    header_hint_s: int | None = None  # Cache-Control max-age, Expires
    moved_to: str | None = None  # permanent redirect target


@dataclass(frozen=True)
class FeedEvent:
    feed_url: str
    at: datetime
    event: str  # 'moved' | 'backoff' | 'dead' | 'revived' | 'retired' | 'recovered'
    detail: str | None = None


@dataclass(frozen=True)
class ScheduleUpdate:
    schedule: FeedSchedule
    events: tuple[FeedEvent, ...] = field(default_factory=tuple)


def is_due(schedule: FeedSchedule, now: datetime) -> bool:
    if schedule.state == RETIRED:
        return False
    return schedule.next_due_at is None or schedule.next_due_at <= now


# --------------------------------------------------------------------------- hints


def feed_hint_seconds(ttl: str | None, update_period: str | None, update_frequency: str | None) -> int | None:
    """The interval a feed asks for in its document (RSS ``<ttl>`` minutes, RSS 1.0 syndication)."""
    hints = []
    if ttl is not None:
        try:
            minutes = float(str(ttl).strip())
        except ValueError:
            minutes = 0
        if 0 < minutes < 1e7:
            hints.append(int(minutes * 60))
    if update_period:
        period = SY_PERIODS.get(str(update_period).strip().lower())
        if period:
            try:
                frequency = int(str(update_frequency or "1").strip())
            except ValueError:
                frequency = 1
            hints.append(period // max(1, frequency))
    return max(hints) if hints else None


def header_hint_seconds(headers: Mapping[str, str], now: datetime) -> int | None:
    """How long the response says it stays fresh: ``Cache-Control: max-age``, else ``Expires``."""
    lower = {k.lower(): v for k, v in headers.items()}
    cache_control = lower.get("cache-control", "")
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() in ("no-cache", "no-store"):
            return None
        if name.lower() == "max-age":
            try:
                seconds = int(value.strip().strip('"'))
            except ValueError:
                return None
            return seconds if seconds > 0 else None
    expires = lower.get("expires")
    if expires:
        try:
            when = parsedate_to_datetime(expires)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = int((when - now).total_seconds())
        return seconds if seconds > 0 else None
    return None


# --------------------------------------------------------------------------- the transition


def _bounds(policy: SchedulePolicy, override: FeedOverride) -> tuple[float, float]:
    low = policy.min_interval.total_seconds()
    high = policy.max_interval.total_seconds()
    if override.min_interval_s is not None:
        low = override.min_interval_s
    if override.max_interval_s is not None:
        high = override.max_interval_s
    return low, max(low, high)


def rate_from_dates(dates: Iterable[datetime], now: datetime) -> float | None:
    """New entries per day, from the dates of the entries a feed lists (None when unknowable)."""
    recent = sorted(d for d in dates if now - RATE_WINDOW <= d <= now + timedelta(hours=1))
    if len(recent) < 2:
        return None
    span_days = (recent[-1] - recent[0]).total_seconds() / 86400
    if span_days * 86400 < 60:  # all at one instant: an import or a regenerated feed, not a rate
        return None
    return (len(recent) - 1) / span_days


def update_rate(previous: FeedSchedule, obs: PollObservation) -> float | None:
    """The smoothed publishing rate (new entries per day) after this observation."""
    if obs.changed:
        from_dates = rate_from_dates(obs.entry_dates, obs.at)
        if from_dates is not None:
            return from_dates
    if previous.last_polled_at is None:
        return previous.new_per_day
    elapsed_days = max((obs.at - previous.last_polled_at).total_seconds() / 86400, 1e-6)
    observed = obs.new_entries / elapsed_days
    if previous.new_per_day is None:
        return observed
    weight = 1 - math.exp(-elapsed_days / (RATE_MEMORY.total_seconds() / 86400))
    return previous.new_per_day + weight * (observed - previous.new_per_day)


def healthy_interval(
    rate: float | None,
    hint_s: int | None,
    policy: SchedulePolicy,
    override: FeedOverride,
    window_overflowed: bool = False,
    previous_interval_s: int | None = None,
) -> int:
    """Seconds until the next poll of a feed that answers: adapted, hinted, bounded."""
    low, high = _bounds(policy, override)
    if override.interval_s is not None:
        return int(override.interval_s)
    if rate is None:
        interval = policy.first_interval.total_seconds()
    elif rate <= 0:
        interval = high
    else:
        interval = 86400 * TARGET_NEW_PER_POLL / rate
    if window_overflowed and previous_interval_s:
        # Every entry in the document was new: entries may have scrolled out unseen. Come back sooner.
        interval = min(interval, previous_interval_s / 2)
    if hint_s:  # the feed's own "do not poll more often than this", up to our ceiling
        interval = max(interval, min(hint_s, high))
    return int(min(max(interval, low), high))


def _jittered(seconds: float, rng: random.Random, spread: float) -> timedelta:
    return timedelta(seconds=seconds * (1 + spread * (2 * rng.random() - 1)))


def backoff_delay(failures: int, policy: SchedulePolicy, rng: random.Random) -> timedelta:
    """Exponential backoff with jitter: base * 2^(n-1), capped, drawn from [75%, 100%] of it."""
    step = policy.backoff_base.total_seconds() * (2 ** min(max(failures - 1, 0), 30))
    step = min(step, policy.backoff_cap.total_seconds())
    return timedelta(seconds=step * (1 - BACKOFF_JITTER * rng.random()))


def next_schedule(
    feed_url: str,
    previous: FeedSchedule,
    obs: PollObservation,
    policy: SchedulePolicy,
    override: FeedOverride = FeedOverride(),
    rng: random.Random | None = None,
) -> ScheduleUpdate:
    """The state of a feed after one poll, and the events worth recording."""
    rng = rng or random.Random()
    now = obs.at
    events: list[FeedEvent] = []
    fetch_url = previous.fetch_url
    if obs.moved_to and obs.moved_to != (previous.fetch_url or feed_url):
        fetch_url = None if obs.moved_to == feed_url else obs.moved_to
        events.append(
            FeedEvent(
                feed_url,
                now,
                "moved",
                f"{previous.fetch_url or feed_url} -> {obs.moved_to} (HTTP {obs.status})",
            )
        )

    if obs.status == 410:
        events.append(FeedEvent(feed_url, now, "retired", "HTTP 410 Gone"))
        return ScheduleUpdate(
            replace(
                previous,
                state=RETIRED,
                state_changed_at=now,
                next_due_at=None,
                fetch_url=fetch_url,
                consecutive_failures=previous.consecutive_failures + 1,
                first_failure_at=previous.first_failure_at or now,
                last_polled_at=now,
            ),
            tuple(events),
        )

    if obs.ok:
        rate = update_rate(previous, obs)
        hint = max((h for h in (obs.feed_hint_s, obs.header_hint_s) if h), default=None)
        if not obs.changed and hint is None:
            hint = previous.hint_interval_s  # a 304 carries no document: keep the feed's own hint
        overflowed = (
            obs.changed
            and previous.last_success_at is not None
            and obs.entries_in_feed > 1
            and obs.new_entries >= obs.entries_in_feed
        )
        interval = healthy_interval(rate, hint, policy, override, overflowed, previous.poll_interval_s)
        if previous.state == DEAD:
            events.append(
                FeedEvent(
                    feed_url, now, "revived", f"answered after {previous.consecutive_failures} failures"
                )
            )
        elif previous.state == BACKOFF:
            events.append(
                FeedEvent(feed_url, now, "recovered", f"after {previous.consecutive_failures} failures")
            )
        state_changed = previous.state != ACTIVE
        return ScheduleUpdate(
            FeedSchedule(
                state=ACTIVE,
                state_changed_at=now if state_changed else previous.state_changed_at or now,
                next_due_at=now + _jittered(interval, rng, INTERVAL_JITTER),
                poll_interval_s=interval,
                hint_interval_s=hint,
                fetch_url=fetch_url,
                consecutive_failures=0,
                first_failure_at=None,
                last_success_at=now,
                last_polled_at=now,
                last_new_entry_at=now if obs.new_entries else previous.last_new_entry_at,
                new_per_day=rate,
            ),
            tuple(events),
        )

    if obs.error_class in NOT_REQUESTED:
        # We did not ask (the host asked every client for a pause): not the feed's failure. Look
        # again soon; no request leaves before the host's pause is over.
        return ScheduleUpdate(replace(previous, next_due_at=now + policy.min_interval, fetch_url=fetch_url))

    failures = previous.consecutive_failures + 1
    first_failure = previous.first_failure_at or now
    reason = f"{obs.error_class}: {(obs.error_message or '')[:200]}".rstrip(": ")
    dead = (
        previous.state == DEAD
        or failures >= policy.dead_after_failures
        or now - first_failure >= policy.dead_after
    )
    if dead:
        if previous.state != DEAD:
            events.append(
                FeedEvent(
                    feed_url,
                    now,
                    "dead",
                    f"{failures} failures since {first_failure:%Y-%m-%d %H:%M}Z; last {reason}",
                )
            )
        state, delay = DEAD, _jittered(policy.dead_probe_interval.total_seconds(), rng, INTERVAL_JITTER)
    else:
        if previous.state == ACTIVE:
            events.append(FeedEvent(feed_url, now, "backoff", reason))
        state, delay = BACKOFF, backoff_delay(failures, policy, rng)
    return ScheduleUpdate(
        replace(
            previous,
            state=state,
            state_changed_at=now if state != previous.state else previous.state_changed_at or now,
            next_due_at=now + delay,
            fetch_url=fetch_url,
            consecutive_failures=failures,
            first_failure_at=first_failure,
            last_polled_at=now,
        ),
        tuple(events),
    )


def revive(previous: FeedSchedule, now: datetime) -> FeedSchedule:
    """A user's ``feeds revive``: due now, failure streak forgotten, state active."""
    return replace(
        previous,
        state=ACTIVE,
        state_changed_at=now,
        next_due_at=now,
        consecutive_failures=0,
        first_failure_at=None,
    )
