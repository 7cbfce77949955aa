-- Paying once (issue 22): reuse across jobs by fingerprint, and provider prompt caching.
-- urls.fingerprint: sha256 of what made a generated row's opener, but its page (account, normalised
-- URL, instructions as rendered for the row with its {{column}} values and any reviewer feedback,
-- model, language option, word limits, variants); urls.page_hash: sha256 of the page summary the
-- opener was written from (NULL: page context off or no page). Both are set on completed rows the
-- model wrote (never on reused ones, so an opener is reused for REUSE_DAYS after it was written,
-- not for ever). A new row matches an earlier one when both are equal. The account is part of the
-- fingerprint and the lookup checks it again through jobs.account_id: nothing crosses accounts.
-- urls.cached_tokens / jobs.cached_tokens: the provider's cached prompt tokens
-- (usage.prompt_tokens_details.cached_tokens), included in prompt_tokens and priced at the
-- model's cached-input price. jobs.reuse: the job's `reuse` option (default true).
ALTER TABLE urls ADD COLUMN fingerprint bytea CHECK (octet_length(fingerprint) = 32);
ALTER TABLE urls ADD COLUMN page_hash bytea CHECK (octet_length(page_hash) = 32);
ALTER TABLE urls ADD COLUMN cached_tokens integer CHECK (cached_tokens >= 0);
ALTER TABLE jobs ADD COLUMN reuse boolean NOT NULL DEFAULT true;
ALTER TABLE jobs ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0);

-- One query per claimed batch: fingerprint = ANY(...) AND finished_at > now() - REUSE_DAYS.
-- Partial: rows without a fingerprint (most of a table's history, failed and reused rows) cost
-- the index nothing.
CREATE INDEX urls_fingerprint_idx ON urls (fingerprint, finished_at) WHERE fingerprint IS NOT NULL;
