-- Accounts own jobs; API keys say which account (and role) a caller acts for. Keys are stored
-- only as a SHA-256 of the whole key, found by their public prefix. A NULL limit means "the
-- setting's default", so changing a default reaches every account that never set its own.

CREATE TABLE accounts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    disabled_at  timestamptz,
    rpm          integer CHECK (rpm >= 0),
    urls_per_day integer CHECK (urls_per_day >= 0),
    max_jobs     integer CHECK (max_jobs >= 0),
    models       text[]
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    prefix       text        NOT NULL UNIQUE,
    secret_hash  bytea       NOT NULL,
    name         text        NOT NULL DEFAULT '',
    role         text        NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'admin')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE INDEX api_keys_account_idx ON api_keys (account_id);

-- URLs accepted per account and UTC day (the daily quota); one row per account and day.
CREATE TABLE account_usage (
    account_id uuid   NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    day        date   NOT NULL,
    urls       bigint NOT NULL DEFAULT 0 CHECK (urls >= 0),
    PRIMARY KEY (account_id, day)
);

-- Jobs from before accounts existed belong to the account named `default`. The touch trigger
-- is off for the backfill so updated_at keeps meaning "the job last moved" (the stall sweep
-- reads it).
INSERT INTO accounts (name) VALUES ('default');

ALTER TABLE jobs ADD COLUMN account_id uuid REFERENCES accounts (id);
ALTER TABLE jobs DISABLE TRIGGER jobs_touch;
UPDATE jobs SET account_id = (SELECT id FROM accounts WHERE name = 'default');
ALTER TABLE jobs ENABLE TRIGGER jobs_touch;
ALTER TABLE jobs ALTER COLUMN account_id SET NOT NULL;

-- GET /api/jobs lists one account's jobs: newest first, optionally by status, keyset on
-- (created_at, id). The account index also serves the foreign key.
DROP INDEX jobs_created_idx;
DROP INDEX jobs_status_created_idx;
CREATE INDEX jobs_account_created_idx ON jobs (account_id, created_at DESC, id DESC);
CREATE INDEX jobs_account_status_created_idx ON jobs (account_id, status, created_at DESC, id DESC);
-- Sweeps across every account (stalled processing jobs, requeue on start) look at the few
-- processing jobs only, by how long they have been idle.
CREATE INDEX jobs_processing_idx ON jobs (updated_at) WHERE status = 'processing';
