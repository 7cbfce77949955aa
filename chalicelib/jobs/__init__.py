"""Jobs: a job's life from the API's side. Created from an upload (`create`; a big presigned
upload goes by parts: `multipart`), started
(`start`, or a drop: `drops`), changed (`control`: cancel, retry), swept for what crashes left
undone (`sweep`), shown (`views`), exported (`export`; downloads, built in the
request or the background: `downloads`) and previewed (`preview`). Request
options are checked in `options`.

Functions take primitives plus the adapters they need (connection, Storage, ChunkQueue,
Settings), so tests hand in real or fake ones. Nothing half-written survives a failure: an
upload that fails validation stores nothing; a start that fails midway rolls back. `app.py`
calls `jobs.<service>(...)` from this package's surface below.
"""

from chalicelib.generation.dispatch import dispatch_next
from chalicelib.jobs.control import cancel, give_up_chunk, retry
from chalicelib.jobs.create import choose_url_column, create_from_upload, create_presigned_upload, read_source
from chalicelib.jobs.downloads import build_export, download, request_export, results_on_completion, webhook_hold_s
from chalicelib.jobs.drops import start_drop_job, start_from_drop
from chalicelib.jobs.export import EXTRA_COLUMNS, export_job, neutralize, render_csv, write_csv
from chalicelib.jobs.ingest import ingest_file
from chalicelib.jobs.multipart import complete as complete_upload
from chalicelib.jobs.multipart import uploaded_parts
from chalicelib.jobs.options import MAX_INSTRUCTIONS, account_models, allowed_model
from chalicelib.jobs.start import start, take_account_capacity
from chalicelib.jobs.sweep import requeue_ingests, requeue_unfinished, sweep
from chalicelib.jobs.views import account_view, get, job_json, list_, metrics, require_job, results

__all__ = [
    "EXTRA_COLUMNS", "MAX_INSTRUCTIONS", "account_models", "account_view", "allowed_model", "build_export", "cancel",
    "choose_url_column", "complete_upload", "uploaded_parts",
    "create_from_upload", "create_presigned_upload", "dispatch_next", "download", "export_job", "get",
    "give_up_chunk", "ingest_file", "job_json", "list_", "metrics", "neutralize", "read_source", "render_csv",
    "request_export", "require_job", "requeue_ingests", "requeue_unfinished", "results",
    "results_on_completion", "retry", "start", "start_drop_job",
    "start_from_drop", "sweep", "take_account_capacity", "webhook_hold_s", "write_csv",
]
