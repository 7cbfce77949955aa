-- Openers generated (and paid for) after their job was canceled and its handler had stopped
-- waiting: thrown away, counted so /api/metrics and the logs show what a cancel cost.
ALTER TABLE jobs ADD COLUMN discarded_results integer NOT NULL DEFAULT 0;
