-- Marks a regeneration (issue 21) leaves on a row for its next generation, shared with reuse
-- (issue 22): urls.feedback is added to the job's instructions for this row only (NULL: none);
-- urls.no_reuse makes the next generation call the model even when an earlier opener with the
-- same fingerprint exists ("regenerate never reuses").
ALTER TABLE urls ADD COLUMN feedback text CHECK (length(feedback) <= 2000);
ALTER TABLE urls ADD COLUMN no_reuse boolean NOT NULL DEFAULT false;
