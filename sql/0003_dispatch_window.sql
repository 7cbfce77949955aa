-- A job keeps at most CHUNKS_PER_JOB chunk messages out at once: the rest wait here, in order,
-- and each chunk a handler finishes sends the next. So one big job never fills the queue (and
-- every handler slot) ahead of other accounts' work.
ALTER TABLE jobs ADD COLUMN undispatched integer[] NOT NULL DEFAULT '{}';
