-- Paying once (issue 22, the rest): usage priced as jobs are.
-- A batch job's row may have calls made live (the quality checks' re-asks of its batch answer),
-- paid at the live price, not the batch price. Until now only the job kept that split
-- (jobs.live_prompt_tokens / live_completion_tokens, sql/0017), so usage per day, which is summed
-- from the rows, priced a batch job's re-asks at the batch price. Each row now keeps the part of
-- its prompt_tokens, completion_tokens and cached_tokens that was paid live (NULL: none, and
-- always NULL for a live job's rows, whose tokens are all live); the job adds them to its
-- counters in the same statement as the rest (jobs.live_cached_tokens is new: a re-ask's cached
-- prompt tokens cost the live cached price, a batch answer's the batch one).
-- preview_usage.cached_tokens: a preview's cached prompt tokens, priced at the cached price.
ALTER TABLE urls ADD COLUMN live_prompt_tokens integer CHECK (live_prompt_tokens >= 0);
ALTER TABLE urls ADD COLUMN live_completion_tokens integer CHECK (live_completion_tokens >= 0);
ALTER TABLE urls ADD COLUMN live_cached_tokens integer CHECK (live_cached_tokens >= 0);
ALTER TABLE jobs ADD COLUMN live_cached_tokens bigint NOT NULL DEFAULT 0 CHECK (live_cached_tokens >= 0);
ALTER TABLE preview_usage ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0);
