-- Openers you can trust (issue 20): what each opener rests on and what the checks found.
-- urls: evidence (the prospect's words the opener's detail rests on, or NULL), grounding
-- (verified | generic | unsupported), quality (the flags: too_long, too_short, duplicate, spammy,
-- wrong_language, generic, ungrounded, edited), words, language (ISO 639-1 written in), reused
-- (taken from an earlier job: issue 22), regenerations (calls made again by the checks).
-- jobs: the options (grounding strict | flag, word limits, language auto | ISO 639-1) and the
-- quality summary as counters kept by save_results in the same statement as the row counts:
-- {"verified", "generic", "unsupported", "regenerated", "reused": n, "flagged": {flag: n},
--  "words": {"<words>": n}} (a histogram, so the median needs no scan of the rows).
ALTER TABLE urls ADD COLUMN evidence text;
ALTER TABLE urls ADD COLUMN grounding text CHECK (grounding IN ('verified', 'generic', 'unsupported'));
ALTER TABLE urls ADD COLUMN quality text[] NOT NULL DEFAULT '{}';
ALTER TABLE urls ADD COLUMN words integer CHECK (words >= 0);
ALTER TABLE urls ADD COLUMN language text;
ALTER TABLE urls ADD COLUMN reused boolean NOT NULL DEFAULT false;
ALTER TABLE urls ADD COLUMN regenerations integer NOT NULL DEFAULT 0 CHECK (regenerations >= 0);

ALTER TABLE jobs ADD COLUMN grounding text NOT NULL DEFAULT 'strict' CHECK (grounding IN ('strict', 'flag'));
ALTER TABLE jobs ADD COLUMN min_words integer NOT NULL DEFAULT 8 CHECK (min_words >= 1);
ALTER TABLE jobs ADD COLUMN max_words integer NOT NULL DEFAULT 40 CHECK (max_words >= min_words);
ALTER TABLE jobs ADD COLUMN language text NOT NULL DEFAULT 'auto';
ALTER TABLE jobs ADD COLUMN quality jsonb NOT NULL DEFAULT '{}'::jsonb;

-- GET /api/jobs/{id}/results?quality=<flag>
CREATE INDEX urls_quality_idx ON urls USING gin (quality) WHERE quality <> '{}';
