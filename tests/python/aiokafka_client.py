"""An aiokafka group member or producer, driven by tests/tests/groups_python.rs.

Same modes, arguments and line protocol as kafka_python_client.py:
  aiokafka_client.py produce BOOTSTRAP TOPIC PARTITIONS PREFIX COUNT
  aiokafka_client.py consume BOOTSTRAP GROUP TOPIC
(stdout: "ASSIGNED p,p,...", "RECORD partition offset value", "COMMITTED", "CLOSED",
"PRODUCED COUNT"; stdin: "commit", "close").
"""

import asyncio
import logging
import sys
import threading

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def produce(bootstrap, topic, partitions, prefix, count):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                client_id="aiokafka-producer")
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value=f"{prefix}-{i}".encode(),
                                partition=i % partitions)
            for i in range(count)
        ]
        await asyncio.wait_for(asyncio.gather(*sent), timeout=30)
    finally:
        await producer.stop()
    say(f"PRODUCED {count}")


def stdin_commands(loop):
    """Commands from stdin, read on a thread and handed to the event loop."""
    commands = asyncio.Queue()

    def read():
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "close")

    threading.Thread(target=read, daemon=True).start()
    return commands


async def consume(bootstrap, group, topic):
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id="aiokafka-member",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    commands = stdin_commands(asyncio.get_running_loop())
    assigned = None
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        for records in batches.values():
            for r in records:
                say(f"RECORD {r.partition} {r.offset} {r.value.decode()}")
        now = sorted(tp.partition for tp in consumer.assignment())
        if now != assigned:
            assigned = now
            say("ASSIGNED " + ",".join(str(p) for p in now))
        if commands.empty():
            continue
        command = commands.get_nowait()
        if command == "commit":
            await consumer.commit()
            say("COMMITTED")
        elif command == "close":
            await consumer.stop()
            say("CLOSED")
            return


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="aiokafka %(levelname)s %(name)s: %(message)s")
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "produce":
        bootstrap, topic, partitions, prefix, count = args
        asyncio.run(produce(bootstrap, topic, int(partitions), prefix, int(count)))
    elif mode == "consume":
        asyncio.run(consume(*args))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
