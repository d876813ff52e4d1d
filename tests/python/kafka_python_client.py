"""A kafka-python group member or producer, driven by tests/tests/groups_python.rs.

Usage:
  kafka_python_client.py produce BOOTSTRAP TOPIC PARTITIONS PREFIX COUNT
      Sends COUNT records "PREFIX-i" round-robin over the partitions with the default
      (idempotent, acks=all) producer, waits
      for every acknowledgement, prints "PRODUCED COUNT" and exits.
  kafka_python_client.py consume BOOTSTRAP GROUP TOPIC
      Joins GROUP subscribed to TOPIC (manual commits, earliest reset) and prints, one
      line each, "ASSIGNED p,p,..." whenever its assignment changes and
      "RECORD partition offset value" per record. Commands arrive on stdin, one per line:
      "commit" (commit the consumed positions synchronously, then print "COMMITTED") and
      "close" (leave the group, print "CLOSED", exit). End of stdin means "close".

Every line goes out flushed, so the test sees it at once.
"""

import logging
import queue
import sys
import threading

from kafka import KafkaConsumer, KafkaProducer


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def produce(bootstrap, topic, partitions, prefix, count):
    # kafka-python's defaults: idempotence on (InitProducerId, sequence numbers).
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="kafka-python-producer")
    futures = [
        producer.send(topic, value=f"{prefix}-{i}".encode(), partition=i % partitions)
        for i in range(count)
    ]
    for f in futures:
        f.get(timeout=30)
    producer.close()
    say(f"PRODUCED {count}")


def stdin_commands():
    """Commands from stdin, read on a thread so polling never blocks on them."""
    commands = queue.Queue()

    def read():
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("close")

    threading.Thread(target=read, daemon=True).start()
    return commands


def consume(bootstrap, group, topic):
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id="kafka-python-member",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    consumer.subscribe([topic])
    commands = stdin_commands()
    assigned = None
    while True:
        for records in consumer.poll(timeout_ms=100).values():
            for r in records:
                say(f"RECORD {r.partition} {r.offset} {r.value.decode()}")
        now = sorted(tp.partition for tp in consumer.assignment())
        if now != assigned:
            assigned = now
            say("ASSIGNED " + ",".join(str(p) for p in now))
        try:
            command = commands.get_nowait()
        except queue.Empty:
            continue
        if command == "commit":
            consumer.commit()
            say("COMMITTED")
        elif command == "close":
            consumer.close()
            say("CLOSED")
            return


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="kafka-python %(levelname)s %(name)s: %(message)s")
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "produce":
        bootstrap, topic, partitions, prefix, count = args
        produce(bootstrap, topic, int(partitions), prefix, int(count))
    elif mode == "consume":
        consume(*args)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
