"""Stand-in for the original design's slave script: one thread per dispatch channel, each running
the job (echo) and publishing its id to CHANNEL_RESULT. Plain redis-py, no geventsched."""

import sys
import threading

import redis

url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
channels = int(sys.argv[2]) if len(sys.argv) > 2 else 3


def serve(channel):
    r = redis.Redis.from_url(url)
    pubsub = r.pubsub()
    pubsub.subscribe(channel)
    for message in pubsub.listen():
        if message["type"] == "message":
            r.publish("CHANNEL_RESULT", message["data"])


threads = [threading.Thread(target=serve, args=("CHANNEL_DISPATCH_%d" % n,)) for n in range(1, channels + 1)]
for thread in threads:
    thread.start()
print("slave ready", flush=True)
for thread in threads:
    thread.join()
