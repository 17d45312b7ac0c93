"""The messages of one dispatched batch: a message per job, or batch frames (``protocol.py``).

The master fills an ``Outbox`` job by job as it picks channels, then publishes ``messages()`` in one
write. A channel whose worker reads frames gets its jobs in as few frames as fit ``max_bytes`` each
(a frame never grows past what one job may be, so no message outgrows the worker's limit); other
channels (older workers, the original slaves, the raw codec) get one message per job, as before. A
job whose record is larger than ``REF_THRESHOLD`` goes by reference when its record is in Redis.
"""

from geventsched.protocol import REF_THRESHOLD


class Outbox:
    def __init__(self, codec, token, max_bytes, by_reference):
        self.codec = codec
        self.token = token
        self._tail = codec.dispatch_tail(token)
        self.max_bytes = max_bytes
        self.by_reference = by_reference  # records are kept in Redis: large ones may go by reference
        self._frames = {}  # channel -> the frame being filled: [entries, pieces, bytes]
        self._out = []  # (channel name, payload or None for a frame's pieces, entries, pieces)

    def piece(self, job, channel):
        """What ``job`` adds to ``channel``'s messages: its bytes (the piece ``put`` takes)."""
        if not channel.frames:
            return self.codec.encode_dispatch(job, self._tail)
        record = self.codec.encode_job(job)
        if self.by_reference and len(record) > REF_THRESHOLD:
            return self.codec.ref(job.id)
        return record

    def put(self, entry, piece):
        """Add ``piece`` (from ``piece``) for the ledger ``entry`` of its job."""
        channel = entry.channel
        if not channel.frames:
            self._out.append((channel.name, piece, [entry], None))
            return
        frame = self._frames.get(channel)
        if frame is not None and frame[2] + len(piece) + 1 > self.max_bytes:
            self._close(channel, frame)
            frame = None
        if frame is None:
            frame = self._frames[channel] = [[], [], self.codec.frame_room(self.token)]
        frame[0].append(entry)
        frame[1].append(piece)
        frame[2] += len(piece) + 1

    def _close(self, channel, frame):
        self._out.append((channel.name, None, frame[0], frame[1]))
        del self._frames[channel]

    def messages(self):
        """``[(channel name, payload, [ledger entries]), ...]``: every message of the batch."""
        for channel, frame in list(self._frames.items()):
            self._close(channel, frame)
        encode = self.codec.encode_frame
        return [(name, payload if pieces is None else encode(pieces, self.token), entries)
                for name, payload, entries, pieces in self._out]
