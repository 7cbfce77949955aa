-- Variants (issue 21 item 4): a job may ask for 1 to 3 openers per row, in one call.
-- jobs.variants: the job's option (1: no variants, as before).
-- urls.variants: with variants > 1, every opener of the row, in the model's order, each checked:
-- [{"opener", "evidence", "grounding", "quality", "words"}, ...] (strict grounding drops the
-- unsupported ones, so a row may hold fewer than asked); NULL for a job without variants.
-- urls.variant: which of them (1-based) is the row's opener: 1 as written, a person's pick after
-- (PATCH {"variant": i}). A pick is not an edit (no `edited` flag): the opener, its evidence,
-- grounding, flags and words become the variant's, and its source is a person.
ALTER TABLE jobs ADD COLUMN variants smallint NOT NULL DEFAULT 1 CHECK (variants BETWEEN 1 AND 3);
ALTER TABLE urls ADD COLUMN variants jsonb CHECK (variants IS NULL OR jsonb_typeof(variants) = 'array');
ALTER TABLE urls ADD COLUMN variant smallint CHECK (variant BETWEEN 1 AND 3);

-- The history trigger of sql/0015_review.sql, with one more way an opener becomes a person's:
-- the statement that picks a variant says so for its transaction
-- (set_config('csv_opener.opener_source', 'person', true)), since a pick leaves no `edited` flag.
CREATE OR REPLACE FUNCTION touch_url() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF NEW.opener IS DISTINCT FROM OLD.opener OR NEW.review IS DISTINCT FROM OLD.review
       OR NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.version := OLD.version + 1;
    END IF;
    IF NEW.opener IS DISTINCT FROM OLD.opener THEN
        NEW.opener_at := CASE WHEN NEW.opener IS NULL THEN NULL ELSE now() END;
        NEW.opener_source := CASE WHEN NEW.opener IS NULL THEN NULL
                                  WHEN 'edited' = ANY (NEW.quality)
                                       OR current_setting('csv_opener.opener_source', true) = 'person'
                                      THEN 'person'
                                  ELSE 'model' END;
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
