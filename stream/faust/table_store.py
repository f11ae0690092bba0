"""The Faust profile table as the processor's profile store, and its codec."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any, cast

import orjson
from faust.serializers import codecs
from faust.streams import _current_event
from faust.types import TP

from stream.records import InputMessage
from stream.settings import Settings
from stream.stored_profile import StoredProfile, from_changelog

#: The profile table's value serializer (:class:`ProfileCodec`).
PROFILE_CODEC = "feedback-profile"


class ProfileCodec(codecs.Codec):
    """The profile table's values: a :class:`StoredProfile` in memory, its JSON
    object (:meth:`StoredProfile.to_json`) on the changelog.

    The bytes are those Faust's ``json`` codec writes for that object (orjson,
    the same options), so that changelogs written before and after read alike;
    decoding makes the compact record at once, for the profiles a recovery
    restores too. Tombstones never reach a codec (Faust passes ``None`` through).
    """

    def _dumps(self, obj: Any) -> bytes:
        record = obj.to_json() if isinstance(obj, StoredProfile) else obj
        return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z)

    def _loads(self, s: bytes) -> Any:
        return from_changelog(orjson.loads(s))


codecs.register(PROFILE_CODEC, ProfileCodec())


class ProfileValue:
    """The profile table's ``value_type``.

    Faust takes a table's value serializer from its value type's options
    (``Collection._serializer_from_type``), never from its ``schema``, and
    gives the changelog topic that serializer and type; on decoding it hands
    the codec's result to ``from_data``, which keeps it as it is.
    """

    _options = SimpleNamespace(serializer=PROFILE_CODEC)

    @classmethod
    def from_data(cls, data: Any, preferred_type: Any = None) -> Any:
        return data


def write_as(table: Any, key: str, value: Any, event: Any) -> None:
    """``table[key] = value`` as if within ``event`` (a Faust event of the
    table's source topic): Faust sends the change to the changelog partition of
    the current event, a context variable its stream sets per event and that is
    unset after ``take_events``."""
    token = _current_event.set(weakref.ref(event))
    try:
        table[key] = value
    finally:
        _current_event.reset(token)


class _At:
    """What a Faust store reads of the current event: its message's partition."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


async def write_through(table: Any, writes: Sequence[tuple[str, Any, int]]) -> None:
    """``table[key] = value`` for each ``(key, value, changelog partition)``, the
    changelog records handed straight to the producer; returns once the broker
    has acknowledged them all.

    Faust's own path for a table write queues the record in its producer buffer,
    which one task hands to aiokafka a record at a time (a ``FutureMessage``,
    callbacks and sensors each). While that buffer holds more than 100 records
    (``ProducerBuffer.max_messages``), Faust's conductor holds back *every*
    input record it delivers until a hundred more have left
    (``ProducerBuffer.wait_until_ebb``). The item owner writes hundreds of
    records a batch: through that path the worker's inputs stalled for seconds
    whenever the owners had work, and the buffer drained slower than they wrote.
    The records and their bytes are those Faust would have sent.
    """
    await acknowledged(table, await send_through(table, writes))


async def send_through(table: Any, writes: Sequence[tuple[str, Any, int]]) -> list[Any]:
    """:func:`write_through` up to the broker's acknowledgements: the futures
    to pass to :func:`acknowledged`."""
    if not writes:
        return []
    topic = table.changelog_topic
    name = topic.get_topic_name()
    send = table.app.producer.send
    store = table.data
    futures = []
    for key, value, partition in writes:
        raw_key, _ = topic.prepare_key(key, table.key_serializer)
        raw_value, _ = topic.prepare_value(value, table.value_serializer)
        # The RocksDB store files a key under the current event's partition (and
        # asserts there is one); the owner's periodic write runs in a timer.
        at = _At(partition)
        token = _current_event.set(weakref.ref(cast(Any, at)))
        try:
            store[key] = value
        finally:
            _current_event.reset(token)
        futures.append(await send(name, raw_key, raw_value, partition, None, None))
    return futures


async def acknowledged(table: Any, futures: Sequence[Any]) -> None:
    """Wait for the broker's acknowledgement of records :func:`send_through` sent."""
    if not futures:
        return
    store = table.data
    for meta in await asyncio.gather(*futures):
        # What Faust's own send callback records (a RocksDB store resumes from it).
        store.set_persisted_offset(TP(meta.topic, meta.partition), meta.offset)


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
        write_as(self.table, user_id, profile, source.context)

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
            legacy = profile.legacy_partition
            partition = (
                written if written is not None
                else legacy if legacy is not None else restored.get(user_id)
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
