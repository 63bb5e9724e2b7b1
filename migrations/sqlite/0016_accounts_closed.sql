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

-- Accounts a person can live with. A session counts only while its epoch is the account's:
-- a password change, a reset, "sign out everywhere", disabling or a second-factor reset moves
-- the epoch on and every other session ends at once, on every instance.
ALTER TABLE users ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
-- Accounts made before verification existed count as verified.
ALTER TABLE users ADD COLUMN email_verified_at BIGINT;
UPDATE users SET email_verified_at = created_at;
ALTER TABLE users ADD COLUMN verify_token_hash TEXT;
-- A forgotten password: SHA-256 of a single-use link's token, for an hour.
ALTER TABLE users ADD COLUMN reset_token_hash TEXT;
ALTER TABLE users ADD COLUMN reset_expires_at BIGINT;
-- Resetting someone's second factor takes two admins: the first one's request.
ALTER TABLE users ADD COLUMN second_factor_reset_by BIGINT;
ALTER TABLE users ADD COLUMN second_factor_reset_at BIGINT;
CREATE UNIQUE INDEX users_verify_token_hash ON users (verify_token_hash);
CREATE UNIQUE INDEX users_reset_token_hash ON users (reset_token_hash);
CREATE UNIQUE INDEX users_enrolment_token_hash ON users (enrolment_token_hash);

-- Whose a stored session is, for the account's list of sessions.
ALTER TABLE sessions ADD COLUMN user_id BIGINT;
CREATE INDEX sessions_user_id ON sessions (user_id);
