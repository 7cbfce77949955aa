-- Signed webhooks (issue 12): an account's signing secret (shown once when created or rotated;
-- kept to sign), a job's callback URL, and the deliveries: the queue the sweep works through,
-- with attempts, the last answer and backoff, for up to a day.
ALTER TABLE accounts ADD COLUMN webhook_secret text;
ALTER TABLE jobs ADD COLUMN callback_url text;

CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id          uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event           text        NOT NULL CHECK (event IN ('job.completed', 'job.failed', 'job.canceled')),
    url             text        NOT NULL,
    body            text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_status     integer,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    gave_up_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, event, created_at)
);

-- The sweep's work: deliveries still due, oldest first.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id, created_at DESC);
