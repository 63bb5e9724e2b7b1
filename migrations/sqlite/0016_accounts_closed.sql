-- Accounts closed against what an attacker tried: a per-account cap on wrong second-factor
-- codes (then only a recovery code), tokens that expire, and enrolment of a raised account's
-- first authenticator through a one-time link sent to its own address.

-- Wrong codes in a row, from anywhere; at the cap the authenticator's codes stop counting.
ALTER TABLE users ADD COLUMN second_factor_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN second_factor_locked_at BIGINT;

-- Every token expires (90 days unless asked otherwise); tokens made before this, 90 days on.
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
UPDATE api_tokens SET expires_at = created_at + 7776000;

-- A raised account enrols its first authenticator only through a link mailed to it (SHA-256
-- of the link's token; 24 hours).
ALTER TABLE users ADD COLUMN enrolment_token_hash TEXT;
ALTER TABLE users ADD COLUMN enrolment_expires_at BIGINT;
