"""The Faust profile table as the processor's profile store."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from faust.streams import _current_event

from stream.records import InputMessage
from stream.settings import Settings
from stream.stored_profile import StoredProfile


class TableStore:
    """The profile table as a :class:`~stream.processor.ProfileStore`.

    Faust writes a table change to the changelog partition of the *current*
    event, a context variable its stream sets per event; after ``take_events``
    there is none, so each write sets it to its source event (the user's
    latest event in the batch) for the duration of the write.
    """

    def __init__(self, table: Any, settings: Settings) -> None:
        self.table = table
        self.inputs = set(settings.input_topics)
        # The changelog partition of each profile written here: where its
        # tombstone must go (kept out of the stored profile itself).
        self.partitions: dict[str, int] = {}

    def get(self, user_id: str) -> StoredProfile | None:
        return self.table.get(user_id)

    def put(self, user_id: str, profile: StoredProfile, source: InputMessage) -> None:
        self.partitions[user_id] = source.partition
        token = _current_event.set(weakref.ref(source.context))
        try:
            self.table[user_id] = profile
        finally:
            _current_event.reset(token)

    def delete(self, user_ids: Sequence[str]) -> int:
        """Delete profiles: a tombstone in the changelog partition each was written
        to, so compaction drops it and a restart or a rebalance does not bring it
        back. A profile of a partition this worker no longer owns (revoked since it
        was written) is only dropped from memory: its new owner decides."""
        store = self.table.data
        # Partitions of the profiles restored from the changelog (Faust's memory
        # store records them; those written since are in self.partitions).
        restored = getattr(store, "_key_partition", {})
        owned = {
            tp.partition for tp in self.table.app.assignor.assigned_actives()
            if tp.topic in self.inputs or tp.topic == self.table.changelog_topic_name
        }
        deleted = 0
        for user_id in user_ids:
            written = self.partitions.pop(user_id, None)
            profile = store.get(user_id)
            if profile is None:
                continue
            # A record written by an earlier release may still carry its partition.
            partition = (
                written if written is not None
                else profile.get("partition", restored.get(user_id))
            )
            if partition in owned:
                self.table.send_changelog(partition, user_id, None, value_serializer="raw")
            del store[user_id]
            restored.pop(user_id, None)
            deleted += 1
        return deleted

    def keys(self) -> Iterable[str]:
        return self.table.data.keys()

    def __len__(self) -> int:
        return len(self.table)
