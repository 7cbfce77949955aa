"""Batch mode pays once: a batch the provider created but our row never recorded is found again.

Every batch is created with metadata naming our batch row (``batch``), job and chunk
(``BatchRunner.submit_chunk``). A crash between the provider creating it and our row saying so
leaves the row ``submitting`` and its URL rows claimed under a short lease. When that lease has
run out, the sweep enqueues the chunk again, and before its rows are claimed for a new batch,
``recover`` lists the provider's batches (newest first) for that metadata: one found is recorded
as submitted and read as any other (its rows are not sent again); one not found was never
created, so its rows go back to pending and the batch row is closed with the reason.
"""

from __future__ import annotations

import openai

from chalicelib.adapters import db
from chalicelib.logs import get_logger

log = get_logger("batches")

LOOKBACK_S = 3600  # provider batches created this long before our row began are not ours
NOT_SENT_ERROR = "not sent: no batch with its metadata at the provider after its submitter stopped"


def recover(conn, client: openai.OpenAI, job_id: str, chunk: int, submit_lease_s: int, batch_lease_s: int) -> dict:
    """The chunk's batches left 'submitting' past the submit lease: one the provider has is
    recorded as submitted (its rows held for `batch_lease_s`), one it does not have gives its rows
    back. Returns {"adopted", "released"}: batches of each kind."""
    done = {"adopted": 0, "released": 0}
    stale = db.stale_submitting(conn, job_id, chunk, submit_lease_s)
    if not stale:
        return done
    found = find_remote(client, {str(b["id"]) for b in stale},
                        min(b["created_at"] for b in stale).timestamp() - LOOKBACK_S)
    for batch in stale:
        remote = found.get(str(batch["id"]))
        with conn.transaction():
            if remote is not None:
                held = db.batch_submitted(conn, batch["id"], remote.input_file_id, remote.id, batch_lease_s)
                done["adopted"] += 1
                log.warning("batch found at the provider after its submitter stopped; recorded, not sent again",
                            extra={"batch": str(batch["id"]), "provider_batch_id": remote.id, "requests": held})
            elif db.finish_batch(conn, batch["id"], expected=("submitting",), error=NOT_SENT_ERROR):
                ids = [row["id"] for row in db.batch_rows(conn, batch["id"])]
                released = db.release_urls(conn, str(batch["id"]), ids)
                done["released"] += 1
                log.warning("batch never reached the provider; its rows go back to pending",
                            extra={"batch": str(batch["id"]), "released": released})
    return done


def find_remote(client: openai.OpenAI, ids: set[str], since: float) -> dict:
    """{our batch id: the provider's batch} for those of `ids` found by the ``batch`` of their
    metadata, the provider's list read newest first, page after page, until all are found or
    the batches listed were created before `since` (unix seconds)."""
    found: dict = {}
    for remote in client.batches.list(limit=100):
        mine = (remote.metadata or {}).get("batch")
        if mine in ids and mine not in found:
            found[mine] = remote
        if len(found) == len(ids) or remote.created_at < since:
            break
    return found
