-- Row templates, page context and cost (issue 11).
-- urls.fields: the row's values of the columns the instructions name as {{column}} (capped);
-- urls.context_status: what became of the prospect's page (fetched, blocked, timeout, not_html,
-- robots, error, off). jobs.page_context: fetch pages for this job; jobs.max_cost_usd: stop the
-- job (failed, budget_exceeded) once its cost reaches this.
ALTER TABLE urls ADD COLUMN fields jsonb;
ALTER TABLE urls ADD COLUMN context_status text
    CHECK (context_status IN ('fetched', 'blocked', 'timeout', 'not_html', 'robots', 'error', 'off'));
ALTER TABLE jobs ADD COLUMN page_context boolean NOT NULL DEFAULT true;
ALTER TABLE jobs ADD COLUMN max_cost_usd numeric CHECK (max_cost_usd >= 0);
