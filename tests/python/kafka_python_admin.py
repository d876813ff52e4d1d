"""kafka-python's KafkaAdminClient against rilld, driven by tests/tests/topic_configs.rs.

Usage:
  kafka_python_admin.py alter BOOTSTRAP TOPIC KEY=VALUE...
      IncrementalAlterConfigs SET of each KEY=VALUE on TOPIC; prints the result as JSON.
  kafka_python_admin.py BOOTSTRAP TOPIC
      Runs the steps below against a single broker and prints one JSON object per step
      (flushed), so the Rust test asserts on what the client library saw:
      create (configs given), create_unknown (an unknown key), create_bad_value,
      alter_incremental, alter_validate_only, alter_legacy, describe, produce, consume,
      delete_records, earliest.
"""

import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, KafkaAdminClient, NewTopic


def say(step, **fields):
    fields["step"] = step
    sys.stdout.write(json.dumps(fields, default=str) + "\n")
    sys.stdout.flush()


def describe(admin, topic):
    described = admin.describe_configs([ConfigResource("TOPIC", topic)],
                                       include_synonyms=True, config_filter="all")
    entries = described["topic"][topic]
    return {key: {"value": e.get("value"), "source": str(e.get("config_source"))}
            for key, e in entries.items()}


def alter(bootstrap, topic, pairs):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kafka-python-admin")
    configs = dict(pair.split("=", 1) for pair in pairs)
    result = admin.alter_configs([ConfigResource("TOPIC", topic, configs=configs)],
                                 raise_on_unknown=False)
    say("alter", result=result)
    admin.close()


def main():
    if sys.argv[1] == "alter":
        alter(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    bootstrap, topic = sys.argv[1], sys.argv[2]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kafka-python-admin")

    created = admin.create_topics([NewTopic(topic, 1, 1, topic_configs={
        "compression.type": "lz4",
        "message.timestamp.type": "LogAppendTime",
        "retention.ms": "3600000",
    })], raise_errors=False)
    say("create", result=created)

    bad = admin.create_topics([NewTopic(topic + "-unknown", 1, 1,
                                        topic_configs={"retention.mss": "1"})],
                              raise_errors=False)
    say("create_unknown", result=bad)
    bad = admin.create_topics([NewTopic(topic + "-bad", 1, 1,
                                        topic_configs={"segment.ms": "soon"})],
                              raise_errors=False)
    say("create_bad_value", result=bad)

    result = admin.alter_configs([ConfigResource("TOPIC", topic, configs={
        "segment.ms": "600000",
        # lz4 was accepted at creation; kafka-python's consumer has no lz4 codec
        # installed, so the records are stored gzip-compressed.
        "compression.type": "gzip",
        "cleanup.policy": ("APPEND", "compact"),
        "retention.ms": ("DELETE", None),
    })])
    say("alter_incremental", result=result)

    result = admin.alter_configs([ConfigResource("TOPIC", topic, configs={
        "max.message.bytes": "2000000"})], validate_only=True)
    say("alter_validate_only", result=result, after=describe(admin, topic)["max.message.bytes"])

    # The legacy API replaces the whole set; kafka-python fills in the other modified keys.
    result = admin.alter_configs([ConfigResource("TOPIC", topic, configs={
        "min.insync.replicas": "1"})], incremental=False)
    say("alter_legacy", result=result)

    say("describe", configs=describe(admin, topic))

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                             client_id="kafka-python-producer")
    # cleanup.policy includes compact now: the broker refuses keyless records (as Kafka
    # does), so every record has its own key (and compaction removes none of them).
    metadata = [producer.send(topic, key=f"k-{i}".encode(), value=f"v-{i}".encode(), partition=0,
                              timestamp_ms=1_000_000 + i) for i in range(10)]
    results = [m.get(timeout=30) for m in metadata]
    producer.close()
    say("produce", offsets=[r.offset for r in results],
        timestamps=[r.timestamp for r in results])

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=10000)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    records = []
    for record in consumer:
        records.append(record)
        if len(records) == 10:
            break
    say("consume", values=[r.value.decode() for r in records],
        timestamps=[r.timestamp for r in records],
        timestamp_types=[r.timestamp_type for r in records])

    deleted = admin.delete_records({tp: 5})
    say("delete_records", result={str(k): v for k, v in deleted.items()})
    say("earliest", offset=consumer.beginning_offsets([tp])[tp])
    consumer.close()
    admin.close()


if __name__ == "__main__":
    main()
