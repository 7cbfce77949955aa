-- A big job's job.completed webhook waits for its results CSV (issue 24): above
-- EXPORT_INLINE_ROWS the CSV is built in the background after completion, and a client that
-- downloads on the webhook must get the file, not a 202. Its delivery is still queued at
-- completion (never lost), with `awaits_results` set and next_attempt_at at the latest time it
-- may wait: the build that writes the CSV releases it (attempted at once), a build that fails
-- makes it due, and the sweep sends it when it is due, whatever happened to the build. Whoever
-- takes it clears the flag in the same statement, so it is sent once.
ALTER TABLE webhook_deliveries ADD COLUMN awaits_results boolean NOT NULL DEFAULT false;
CREATE INDEX webhook_deliveries_awaiting_idx ON webhook_deliveries (job_id) WHERE awaits_results;
