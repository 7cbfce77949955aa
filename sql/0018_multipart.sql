-- A presigned upload of a big file goes to S3 as a multipart upload (issue 24): the job keeps the
-- S3 upload id while the parts are being PUT (NULL once it is completed or aborted, so a second
-- complete or abort is harmless), the size the caller declared (every part URL is signed for its
-- exact length, so the object cannot be longer) and the part size the parts were cut by.
ALTER TABLE jobs ADD COLUMN upload_id text CHECK (length(upload_id) <= 1024);
ALTER TABLE jobs ADD COLUMN upload_size bigint CHECK (upload_size > 0);
ALTER TABLE jobs ADD COLUMN upload_part_size bigint CHECK (upload_part_size > 0);
