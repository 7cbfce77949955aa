-- Background ingest (issue 24): `process` answers after reading the header and a sample; the
-- whole file is then read by the ingest function, batch by batch. Each batch's COPY, the job's
-- counters and its progress mark below change in one transaction, so a redelivered ingest
-- message skips exactly what is stored: no row twice, none lost.

ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('pending', 'ingesting', 'processing', 'completed', 'failed', 'canceled'));

-- ingest_row: the last data row of the file (valid or not) whose batch is stored; the file's
-- rows read so far (`ingested_rows` in the API). estimated_rows: the URLs the quota and the
-- estimate were decided on (sample's valid ratio x size), replaced by the exact count at the end.
-- reserved_rows: the URLs taken from the account's daily quota for this job so far.
ALTER TABLE jobs ADD COLUMN ingest_row integer NOT NULL DEFAULT 0 CHECK (ingest_row >= 0);
ALTER TABLE jobs ADD COLUMN estimated_rows integer CHECK (estimated_rows >= 0);
ALTER TABLE jobs ADD COLUMN reserved_rows integer NOT NULL DEFAULT 0 CHECK (reserved_rows >= 0);

-- The sweep looks for ingests whose message was lost.
CREATE INDEX jobs_ingesting_idx ON jobs (updated_at) WHERE status = 'ingesting';
