"""PostgreSQL adapter: one connection per container and thread, and one function per query,
grouped by table (jobs, accounts, urls, batches). Callers use `db.<query>(conn, ...)`; every
function takes the connection first, transactions are the caller's (`with conn.transaction():`),
parameters are never formatted into SQL, bulk rows go by COPY.
"""

from chalicelib.adapters.db.accounts import (  # noqa: F401
    ACCOUNT_LIMIT_COLUMNS,
    UTC_TODAY,
    add_preview_tokens,
    add_urls_today,
    get_account,
    lock_account,
    pending_presigned,
    processing_jobs,
    urls_today,
)
from chalicelib.adapters.db.batches import (  # noqa: F401
    BATCH_COLUMNS,
    batch_cancelling,
    batch_context,
    batch_polled,
    batch_rows,
    batch_submitted,
    finish_batch,
    insert_batch,
    job_batches,
    open_batches,
    requeue_urls,
    stale_submitting,
)
from chalicelib.adapters.db.connection import (  # noqa: F401
    connect,
    get_conn,
    ping,
)
from chalicelib.adapters.db.exports import (  # noqa: F401
    claim_export,
    fail_export,
    finish_export,
    get_export,
    set_result_path_if_unchanged,
    start_export,
)
from chalicelib.adapters.db.ingest import (  # noqa: F401
    begin_ingest,
    count_ingest_resend,
    dispatched_unfinished_chunks,
    give_back_urls_today,
    lock_ingesting_job,
    note_ingest_error,
    stale_ingests,
    store_batch,
    undispatched,
)
from chalicelib.adapters.db.jobs import (  # noqa: F401
    JOB_COLUMNS,
    PROGRESS,
    calibrate_estimate,
    cancel_job,
    clear_upload_id,
    complete_job_if_done,
    completed_without_results,
    count_discarded,
    discarded_results,
    fail_job,
    get_account_job,
    get_job,
    get_job_by_source_key,
    get_job_status,
    insert_job,
    jobs_by_status,
    list_jobs,
    peek_undispatched,
    pop_undispatched,
    set_estimate,
    stale_pending_drops,
    start_job,
    stop_for_budget,
    unstart_job,
    update_job,
    update_pending_job,
    url_totals,
)
from chalicelib.adapters.db.reuse import (  # noqa: F401
    reusable_fingerprints,
    reusable_openers,
    stored_rows,
)
from chalicelib.adapters.db.urls import (  # noqa: F401
    chunk_lease_left,
    claim_urls,
    copy_urls,
    fail_chunk,
    iter_results,
    release_urls,
    renew_leases,
    reset_for_retry,
    restart_job,
    results_page,
    save_results,
    unfinished_chunks,
)
