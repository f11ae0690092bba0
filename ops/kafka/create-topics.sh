#!/usr/bin/env bash
# One-shot topic creation for the compose stack (service `topics`, apache/kafka image).
# Idempotent (--if-not-exists): safe on every `docker compose up`. Settings come from
# the FEEDBACK_* environment, the same variables the workers read.
set -euo pipefail

bootstrap="${FEEDBACK_BOOTSTRAP_SERVERS:-kafka:29092}"
partitions="${FEEDBACK_PARTITIONS:-4}"
replication="${FEEDBACK_REPLICATION_FACTOR:-1}"
# The apache/kafka image's tool; overridable so tests/ops can run this script with a stub.
kafka_topics="${KAFKA_TOPICS_BIN:-/opt/kafka/bin/kafka-topics.sh}"

create() {  # create TOPIC [--config k=v ...]
    local topic="$1"
    shift
    echo "topic ${topic}: partitions=${partitions} replication=${replication} $*"
    "$kafka_topics" --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$topic" --partitions "$partitions" --replication-factor "$replication" "$@"
}

# Input topics: key = user_id, so one partition (one worker) owns one user.
create "${FEEDBACK_TOPIC_CLICKS:-feedback.clicks}"
create "${FEEDBACK_TOPIC_PURCHASES:-feedback.purchases}"
create "${FEEDBACK_TOPIC_REVIEWS:-feedback.reviews}"
# Output topics.
create "${FEEDBACK_TOPIC_RECOMMENDATIONS:-feedback.recommendations}"
create "${FEEDBACK_TOPIC_ALERTS:-feedback.alerts}"
# Dead letters are evidence to investigate: keep them longer than the default 7 days.
create "${FEEDBACK_TOPIC_DEADLETTER:-feedback.deadletter}" \
    --config "retention.ms=${FEEDBACK_DEADLETTER_RETENTION_MS:-1209600000}"
# Erasure requests (key user_id, same partitions as the inputs: the request reaches
# the worker that holds the user) and their receipts, the record that each request
# was carried out: keep receipts as long as that record is needed (docs/privacy.md).
create "${FEEDBACK_TOPIC_ERASURE:-feedback.erasure}"
create "${FEEDBACK_TOPIC_ERASURE_DONE:-feedback.erasure.done}" \
    --config "retention.ms=${FEEDBACK_ERASURE_RECEIPT_RETENTION_MS:-31536000000}"
# The Faust table changelog: compacted, so the latest profile of each user survives
# forever and a restarted worker rebuilds its table from it. Same partition count as
# the input topics (Faust co-partitions the table with its source topics).
create "${FEEDBACK_CHANGELOG_TOPIC:-${FEEDBACK_APP_ID:-feedback-stream}-profiles-changelog}" \
    --config cleanup.policy=compact
# Item sharing (docs/architecture.md), on unless FEEDBACK_SHARE_ITEMS is off: item
# updates keyed by item and the owners' table changelog (co-partitioned with the
# inputs), the published item models (compacted: every worker reads all of it from
# the beginning) and the one-partition globals (blend weights, segment centres).
case "${FEEDBACK_SHARE_ITEMS:-True}" in
    0 | [Ff][Aa][Ll][Ss][Ee] | [Nn][Oo] | [Oo][Ff][Ff]) ;;
    *)
        create "${FEEDBACK_TOPIC_ITEM_UPDATES:-feedback.item-updates}"
        create "${FEEDBACK_APP_ID:-feedback-stream}-item_state-changelog" \
            --config cleanup.policy=compact
        create "${FEEDBACK_TOPIC_ITEM_MODEL:-feedback.item-model}" --config cleanup.policy=compact
        (partitions=1 && create "${FEEDBACK_TOPIC_GLOBALS:-feedback.globals}" \
            --config cleanup.policy=compact)
        ;;
esac

"$kafka_topics" --bootstrap-server "$bootstrap" --describe \
    | grep -E '^Topic:' || true
echo "topics: done"
