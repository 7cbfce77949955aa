-- Jobs and their URLs. Counters live on the job row and change in the same transaction as
-- the URL rows, so processed_rows + failed_rows + (pending + processing) = total_rows holds.

CREATE TABLE jobs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    file_name         text        NOT NULL,
    file_path         text        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'canceled')),
    total_rows        integer     NOT NULL DEFAULT 0 CHECK (total_rows >= 0),
    processed_rows    integer     NOT NULL DEFAULT 0 CHECK (processed_rows >= 0),
    failed_rows       integer     NOT NULL DEFAULT 0 CHECK (failed_rows >= 0),
    progress          smallint    NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    invalid_rows      integer     NOT NULL DEFAULT 0,
    url_column        text,
    columns           jsonb,
    layout            jsonb,
    errors            jsonb       NOT NULL DEFAULT '[]',
    chunks            integer     NOT NULL DEFAULT 0,
    instructions      text,
    model             text,
    source            text        NOT NULL DEFAULT 'upload' CHECK (source IN ('upload', 'presigned', 's3')),
    source_key        text UNIQUE,
    error             text,
    result_path       text,
    prompt_tokens     bigint      NOT NULL DEFAULT 0,
    completion_tokens bigint      NOT NULL DEFAULT 0,
    started_at        timestamptz,
    finished_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (processed_rows + failed_rows <= total_rows)
);

-- GET /api/jobs: newest first, optionally by status, keyset on (created_at, id).
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status_created_idx ON jobs (status, created_at DESC, id DESC);

CREATE TABLE urls (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id            uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    row_number        integer     NOT NULL,
    chunk             integer     NOT NULL,
    url               text        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    opener            text,
    error             text,
    retry_count       integer     NOT NULL DEFAULT 0,
    claimed_by        uuid,
    lease_until       timestamptz,
    prompt_tokens     integer,
    completion_tokens integer,
    finished_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Results in file order (and the download's merge join), keyset on row_number.
CREATE UNIQUE INDEX urls_job_row_idx ON urls (job_id, row_number);
-- Claiming a chunk's work, retry and status filters.
CREATE INDEX urls_job_chunk_status_idx ON urls (job_id, chunk, status);
-- Rows held by workers right now (metrics, lease expiry).
CREATE INDEX urls_processing_idx ON urls (lease_until) WHERE status = 'processing';
-- Throughput over the last minute (GET /api/metrics).
CREATE INDEX urls_finished_idx ON urls (finished_at) WHERE finished_at IS NOT NULL;

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_touch BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER urls_touch BEFORE UPDATE ON urls FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
