-- Previews count in the account's usage (SPEC "Paying once"): their URLs go into account_usage
-- like a start's; their tokens, which belong to no job and so to no URL row, are kept here per
-- day and model, so GET /api/account prices them with the day's other tokens.
CREATE TABLE preview_usage (
    account_id        uuid   NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    day               date   NOT NULL,
    model             text   NOT NULL,
    prompt_tokens     bigint NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens bigint NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    PRIMARY KEY (account_id, day, model)
);
