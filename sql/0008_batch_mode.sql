-- Batch mode (issue 13): a job's requests go through the provider's Batch API at half the price.
-- jobs.mode says which way a job runs. A batch is one chunk's pending URLs sent as one JSONL file:
-- its id is the `claimed_by` of those URL rows (their lease covers the provider's 24-hour window),
-- so results are saved by the same statement as live ones and only onto rows the batch still holds.
ALTER TABLE jobs ADD COLUMN mode text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'batch'));

CREATE TABLE batches (
    id                uuid        PRIMARY KEY,
    job_id            uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    chunk             integer     NOT NULL,
    -- submitting: rows claimed, file being written; submitted: the provider has it; cancelling:
    -- cancel asked of the provider; done: its results are saved (or it could not be sent)
    status            text        NOT NULL CHECK (status IN ('submitting', 'submitted', 'cancelling', 'done')),
    requests          integer     NOT NULL,
    model             text        NOT NULL,
    input_file_id     text,
    provider_batch_id text,
    provider_status   text,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    submitted_at      timestamptz,
    polled_at         timestamptz,
    finished_at       timestamptz
);

-- The sweep's work: batches still with the provider, least recently polled first.
CREATE INDEX batches_open_idx ON batches (polled_at NULLS FIRST) WHERE status IN ('submitted', 'cancelling');
CREATE INDEX batches_job_idx ON batches (job_id);
