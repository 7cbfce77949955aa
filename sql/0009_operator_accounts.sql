-- Roles (SPEC "Roles"): member and admin keys act on their own account only; platform-wide
-- figures (queue and dead-letter depths, provider limits in force, /health details) are for the
-- keys of an operator account. Being an operator is the account's, not a key's: an admin key of
-- a customer account must never see another tenant's load. Existing accounts are customers; an
-- operator account is made with `python -m chalicelib.admin create-account NAME --operator`.
ALTER TABLE accounts ADD COLUMN operator boolean NOT NULL DEFAULT false;
