"""The chunk window: how many of a job's chunk messages are out at once, and which goes next.

A job sends its first `settings.chunk_window` chunks when it starts (CHUNKS_PER_JOB); each finished chunk sends the next
waiting one, so one big job cannot fill the queue ahead of every other account's."""

from __future__ import annotations

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.settings import Settings


def window(chunks: list[int], settings: Settings, mode: str = "live") -> tuple[list[int], list[int]]:
    """(chunks to send now, chunks that wait for one of those to finish). A batch job's chunk
    handlers only write and send files: all go at once."""
    if mode == "batch":
        return chunks, []
    return chunks[: settings.chunk_window], chunks[settings.chunk_window:]


def dispatch_next(conn, queue: ChunkQueue, job_id: str) -> int | None:
    """A chunk of the job finished: send the next waiting one. Sent before it is taken off the
    list (a crash in between sends it twice, which handlers tolerate, never zero times)."""
    while True:
        chunk = db.peek_undispatched(conn, job_id)
        if chunk is None:
            return None
        queue.send_chunks(job_id, [chunk])
        if db.pop_undispatched(conn, job_id, chunk):
            return chunk
