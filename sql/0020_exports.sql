-- Exports built in the background (issue 24): a download of a big job answers 202 while the
-- export function writes its CSV to S3. One row per job and view ('all', or a review filter):
-- `building_since` is the claim of the build running (set by one `UPDATE … WHERE building_since
-- IS NULL`, so concurrent downloads start one build, not N; a claim older than the function's
-- timeout is taken over), the rest describes the last build that finished: its S3 key, the job
-- version it rendered (what the download compares with the job as it is now), when it read the
-- job and how long it took. Kept apart from `jobs` so that recording a build does not move the
-- job's updated_at (which is part of the version).
CREATE TABLE job_exports (
    job_id          uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    view            text NOT NULL CHECK (view IN ('all', 'approved')),
    building_since  timestamptz,
    built_key       text CHECK (length(built_key) <= 1024),
    built_version   text CHECK (length(built_version) <= 200),
    snapshot_at     timestamptz,
    build_seconds   real,
    error           text CHECK (length(error) <= 2000),
    PRIMARY KEY (job_id, view)
);

-- How many times in a row the sweep sent a job's ingest message again without a batch stored in
-- between (issue 24): a file whose reading crashes each time at the same place fails its job
-- after a few, instead of being sent again forever. A stored batch sets it back to 0.
ALTER TABLE jobs ADD COLUMN ingest_attempts integer NOT NULL DEFAULT 0 CHECK (ingest_attempts >= 0);
