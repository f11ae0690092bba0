"""The recommendation debounce, as a stateful step with the clock passed in.

Ranking is the costliest step of an event, and a basket of 20 invoice lines or
a review right after a purchase would otherwise publish 20 or 2 lists within
milliseconds, each obsolete at once. So a trigger's recommendation is *held*:
a later trigger of the same user less than ``min_interval`` (event time) after
it replaces it, and it is published once it is *due*. While held, its input
record stays uncommitted; it is *released* to the commit guard once its
recommendation is published (or replaced by a later trigger, which carries the
hold on). Three words: hold, due, release.

The step owns no clock and publishes nothing: :meth:`Debounce.trigger` takes
the wall clock, :meth:`Debounce.due` and :meth:`Debounce.batch_due` return the
held triggers to publish now (releasing them), and :meth:`Debounce.settle` the
input records to hold and to release, for the commit guard, once the caller
has published.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.events import Event
from stream.stored_profile import StoredProfile

if TYPE_CHECKING:
    from stream.records import InputMessage

__all__ = ["Debounce", "Held"]

_RecordKey = tuple[str, int, int]


def _record_key(record: InputMessage) -> _RecordKey:
    return (record.topic, record.partition, record.offset)


@dataclass(slots=True)
class Held:
    """A user's held recommendation, answering their latest trigger."""

    profile: StoredProfile  # written with the recommendation
    event: Event  # the trigger the recommendation will name
    record: InputMessage  # its input record: uncommitted until the publication
    previous: float | None  # the user's recommended_at before the first merged trigger
    since: float  # wall clock when the first of the merged triggers was held
    last: float  # wall clock of the latest trigger
    batch: int  # the batch that brought the latest trigger


class Debounce:
    """Held recommendations by user, and the input records they hold.

    A held recommendation is due:

    * at the end of a batch (:meth:`batch_due`), when another user's event
      follows its trigger on its partition (a basket's lines are consecutive
      records), when its partition is drained (the broker held nothing past
      the batch at the consumer's last fetch: no more lines have come), or
      when the batch brought no new trigger of the user;
    * between batches (:meth:`due`), ``quiet`` seconds after the user's last
      trigger;
    * always, ``max_delay`` seconds after the first merged trigger.

    Disabled (``enabled=False``: tests, offline tools, a debounce of 0 s),
    everything held is due at the end of its batch.

    Examples
    --------
    >>> from stream.records import InputMessage
    >>> d = Debounce(min_interval=60.0, quiet=0.1, max_delay=1.0)
    >>> rec = InputMessage("purchases", 0, 7, b"u", b"")
    >>> d.start_batch()
    >>> d.trigger("u", {}, Event("purchase", "e1", "u", "i", 100.0), rec, None, now=5.0)
    >>> d.batch_due(5.0, {("purchases", 0): "u"})  # the partition's last user: held
    []
    >>> hold, release = d.settle()
    >>> [r.offset for r in hold], release
    ([7], [])
    >>> d.due(5.05)  # not quiet for 0.1 s yet
    []
    >>> [h.event.event_id for h in d.due(5.2)]
    ['e1']
    >>> hold, release = d.settle()
    >>> hold, [r.offset for r in release]
    ([], [7])
    """

    def __init__(
        self, min_interval: float, quiet: float, max_delay: float, enabled: bool = True
    ) -> None:
        self.min_interval = min_interval
        self.quiet = quiet
        self.max_delay = max_delay
        self.enabled = enabled
        self.held: dict[str, Held] = {}
        self._batches = 0
        # Records held since the last settle() and still held...
        self._new_holds: dict[_RecordKey, InputMessage] = {}
        # ...and records announced as held by an earlier settle(), released since.
        self._released: list[InputMessage] = []

    def __len__(self) -> int:
        return len(self.held)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.held

    def start_batch(self) -> None:
        """A batch begins: triggers held from now on belong to it."""
        self._batches += 1

    def trigger(
        self, user_id: str, profile: StoredProfile, event: Event, record: InputMessage,
        previous: float | None, now: float,
    ) -> Held | None:
        """Hold the user's recommendation for ``event``; ``previous`` is the
        user's last recommendation time, restored if nothing gets published.

        A trigger less than ``min_interval`` (event time) after the user's held
        one replaces it and keeps its ``previous`` and ``since``. A later one
        holds nothing and returns the earlier held one, due now and released:
        publish it, then trigger again.
        """
        earlier = self.held.pop(user_id, None)
        if earlier is not None:
            self._release(earlier.record)  # published now, or carried by the new hold
            if event.timestamp - earlier.event.timestamp >= self.min_interval:
                return earlier
        since = now
        if earlier is not None:
            previous, since = earlier.previous, earlier.since
        self.held[user_id] = Held(profile, event, record, previous, since, now, self._batches)
        self._new_holds[_record_key(record)] = record
        return None

    def _release(self, record: InputMessage) -> None:
        if self._new_holds.pop(_record_key(record), None) is None:
            self._released.append(record)

    def _take(self, due: list[str]) -> list[Held]:
        """Take the ``due`` users' held triggers out, their records released: the
        caller publishes them before it settles."""
        taken = [self.held.pop(user_id) for user_id in due]
        for held in taken:
            self._release(held.record)
        return taken

    def batch_due(
        self, now: float, last_user: Mapping[tuple[str, int], str],
        drained: Container[tuple[str, int]] = (),
    ) -> list[Held]:
        """At the end of a batch: the held recommendations due now, taken out.

        ``last_user`` names the user of each input partition's last event in the
        batch; theirs stay held, since their basket may go on in the next batch,
        unless their partition is in ``drained``: nothing was left past the
        batch, so a held trigger would only wait out a fetch for lines that
        have not been sent.
        """
        deadline = now - self.max_delay
        return self._take([
            u for u, h in self.held.items()
            if not self.enabled or h.batch < self._batches or h.since <= deadline
            or last_user.get(part := (h.record.topic, h.record.partition)) != u
            or part in drained
        ])

    def due(self, now: float) -> list[Held]:
        """Between batches: the held recommendations due at ``now``, taken out
        (``math.inf`` takes them all)."""
        quiet = now - self.quiet
        deadline = now - self.max_delay
        return self._take([
            u for u, h in self.held.items() if h.last <= quiet or h.since <= deadline
        ])

    def drop(self, partitions: Container[tuple[str, int]]) -> int:
        """Forget the held recommendations whose triggers are on ``partitions``
        (revoked by a rebalance): unpublished and their records neither held nor
        released, so the partitions' next owner reads them again. Returns how
        many were dropped."""
        dropped = [
            u for u, h in self.held.items()
            if (h.record.topic, h.record.partition) in partitions
        ]
        for user_id in dropped:
            self._new_holds.pop(_record_key(self.held.pop(user_id).record), None)
        return len(dropped)

    def forget(self, user_id: str) -> bool:
        """Drop the user's held recommendation without publishing it (an erasure):
        its trigger record is released, since nothing will ever answer it."""
        held = self.held.pop(user_id, None)
        if held is None:
            return False
        self._release(held.record)
        return True

    def settle(self) -> tuple[list[InputMessage], list[InputMessage]]:
        """``(hold, release)`` since the last call, for the commit guard: input
        records whose recommendation is held (do not commit them), and records
        announced as held before whose recommendations are now published (commit
        them once the outputs returned with them are acknowledged)."""
        hold, released = list(self._new_holds.values()), self._released
        self._new_holds = {}
        self._released = []
        return hold, released
