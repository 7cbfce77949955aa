-- Review before sending (issue 21): a person's edits and review marks, with the row's history.
-- urls.review: approved | rejected | NULL (not reviewed). urls.version: +1 on every change of
-- the row's opener, review or status (the precondition of an edit: a stale version is a 409).
-- urls.opener_at and opener_source: when the current opener was written, and by whom (model |
-- person: a person's edit is flagged `edited` when written; a regeneration clears the flags
-- before the new opener arrives, so who wrote the one it replaces is kept apart).
-- opener_history: every opener a row had before its current one, with who wrote it and when
-- (the current one is the row's own), kept by the row's update trigger, so the worker's saves,
-- a person's edit and a regeneration all leave it without writing it themselves.
-- jobs.regenerated: the rows of the job's latest regeneration (its webhook says so).
ALTER TABLE urls ADD COLUMN review text CHECK (review IN ('approved', 'rejected'));
ALTER TABLE urls ADD COLUMN version integer NOT NULL DEFAULT 1;
ALTER TABLE urls ADD COLUMN opener_at timestamptz;
ALTER TABLE urls ADD COLUMN opener_source text CHECK (opener_source IN ('model', 'person'));
ALTER TABLE jobs ADD COLUMN regenerated integer NOT NULL DEFAULT 0 CHECK (regenerated >= 0);

CREATE TABLE opener_history (
    id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url_id uuid        NOT NULL REFERENCES urls (id) ON DELETE CASCADE,
    opener text        NOT NULL,
    source text        NOT NULL CHECK (source IN ('model', 'person')),
    at     timestamptz NOT NULL
);
CREATE INDEX opener_history_url_idx ON opener_history (url_id, id);

-- One trigger function per URL row update, as before (touch_updated_at), now also keeping the
-- version, the opener's time and the history: no second trigger call on the workers' hot path.
CREATE FUNCTION touch_url() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF NEW.opener IS DISTINCT FROM OLD.opener OR NEW.review IS DISTINCT FROM OLD.review
       OR NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.version := OLD.version + 1;
    END IF;
    IF NEW.opener IS DISTINCT FROM OLD.opener THEN
        NEW.opener_at := CASE WHEN NEW.opener IS NULL THEN NULL ELSE now() END;
        NEW.opener_source := CASE WHEN NEW.opener IS NULL THEN NULL
                                  WHEN 'edited' = ANY (NEW.quality) THEN 'person' ELSE 'model' END;
        IF OLD.opener IS NOT NULL THEN
            INSERT INTO opener_history (url_id, opener, source, at)
            VALUES (OLD.id, OLD.opener,
                    coalesce(OLD.opener_source, CASE WHEN 'edited' = ANY (OLD.quality) THEN 'person' ELSE 'model' END),
                    coalesce(OLD.opener_at, OLD.finished_at, OLD.updated_at));
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER urls_touch ON urls;
CREATE TRIGGER urls_touch BEFORE UPDATE ON urls FOR EACH ROW EXECUTE FUNCTION touch_url();
