-- The ETag of the file a job validated. Every later read of the file (process, download, export)
-- asks S3 for exactly that version (If-Match), so a file replaced after validation (a presigned
-- PUT repeated, a drop overwritten) is refused instead of read with the stored layout.
ALTER TABLE jobs ADD COLUMN source_etag text;
