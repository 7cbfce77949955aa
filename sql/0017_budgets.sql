-- Estimates within 15 % and budgets that hold (issue 22 items 3-5, issue 20's cost leftovers).
-- jobs.estimate: what the job was expected to cost, beside what it costs (prompt_tokens,
-- completion_tokens). A preview leaves its calibration under "preview" ({"basis", "rows",
-- "prompt_factor", "completion_factor"}: its real usage against the heuristic); the start writes
-- its estimate (generation/pricing.py estimate(): urls, tokens, cost_usd, batch_cost_usd,
-- reused_rows, cached_tokens, basis); the save that completes the first chunk's worth of rows
-- adds "first_chunk" ({"rows", "prompt_tokens", "completion_tokens"}: the whole job projected
-- from those rows' real usage). NULL for jobs started before this migration.
ALTER TABLE jobs ADD COLUMN estimate jsonb;
-- A batch job's calls made live (quality re-asks of batch answers), part of prompt_tokens and
-- completion_tokens but paid at the live price, not the batch price.
ALTER TABLE jobs ADD COLUMN live_prompt_tokens bigint NOT NULL DEFAULT 0 CHECK (live_prompt_tokens >= 0);
ALTER TABLE jobs ADD COLUMN live_completion_tokens bigint NOT NULL DEFAULT 0 CHECK (live_completion_tokens >= 0);

-- Recovery of a batch whose creation was never recorded (a crash between the provider creating
-- it and our row saying so): the chunk's batches still 'submitting'.
CREATE INDEX batches_submitting_idx ON batches (job_id, chunk) WHERE status = 'submitting';
