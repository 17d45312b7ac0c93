"""Stand-in for the original design's master script (threads, plain redis-py, no geventsched).

Publishes job ids 1..99 to CHANNEL_DISPATCH_{1..3} at random, treats PUBLISH = 0 as a failed
dispatch, and collects the ids that come back on CHANNEL_RESULT. Prints one line per outcome and
exits 0 when every id came back.
"""

import random
import sys
import threading
import time

import redis

url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
r = redis.Redis.from_url(url)
results = set()
ready = threading.Event()


def collect():
    pubsub = r.pubsub()
    pubsub.subscribe("CHANNEL_RESULT")
    ready.set()
    for message in pubsub.listen():
        if message["type"] == "message":
            results.add(int(message["data"]))
            if len(results) == 99:
                return


threading.Thread(target=collect, daemon=True).start()
ready.wait()
time.sleep(0.2)
failed = []
for job_id in range(1, 100):
    channel = "CHANNEL_DISPATCH_%d" % random.randint(1, 3)
    if r.publish(channel, job_id) == 0:
        failed.append(job_id)
deadline = time.time() + 20
while len(results) < 99 - len(failed) and time.time() < deadline:
    time.sleep(0.05)
print("dispatched", 99 - len(failed), "failed", len(failed), "returned", len(results))
sys.exit(0 if not failed and results == set(range(1, 100)) else 1)
