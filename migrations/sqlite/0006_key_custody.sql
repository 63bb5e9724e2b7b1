-- Key custody: second factors for accounts, two-person role elevation, node confirmation and
-- revocation, and who created each pair (separation of duties).

-- The TOTP secret, sealed with age to the vault like a private key; enabled once confirmed with
-- a code. `totp_last_step` is the last accepted 30-second step: a code is never accepted twice.
ALTER TABLE users ADD COLUMN totp_sealed TEXT;
ALTER TABLE users ADD COLUMN totp_vault_recipient TEXT;
ALTER TABLE users ADD COLUMN totp_enabled_at BIGINT;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT 0;
-- A raise of role waits for a second admin.
ALTER TABLE users ADD COLUMN requested_role TEXT;
ALTER TABLE users ADD COLUMN role_requested_by BIGINT;
ALTER TABLE users ADD COLUMN role_requested_at BIGINT;
CREATE INDEX users_requested_role ON users (requested_role);

-- One-time recovery codes, stored as SHA-256 hashes; `used_at` is set once.
CREATE TABLE recovery_codes (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

-- When the credential (API token) last proved a second factor; NULL when it never did.
ALTER TABLE api_tokens ADD COLUMN second_factor_at BIGINT;

ALTER TABLE edge_pairs ADD COLUMN created_by BIGINT;

-- awaiting (token issued) -> enrolled (inert) -> confirmed (keys may be sealed to it) -> revoked.
ALTER TABLE edge_nodes ADD COLUMN state TEXT NOT NULL DEFAULT 'awaiting';
ALTER TABLE edge_nodes ADD COLUMN issued_by BIGINT;
ALTER TABLE edge_nodes ADD COLUMN confirmed_by BIGINT;
ALTER TABLE edge_nodes ADD COLUMN confirmed_via TEXT;
ALTER TABLE edge_nodes ADD COLUMN confirmed_at BIGINT;
-- Nodes enrolled before confirmation existed must be confirmed like new ones.
UPDATE edge_nodes SET state = 'enrolled' WHERE node_token_hash IS NOT NULL;
CREATE INDEX node_keys_certificate_id ON node_keys (certificate_id);

-- Each revocation, with the apps whose keys the node held (so their customers can rotate).
CREATE TABLE node_revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id BIGINT NOT NULL REFERENCES edge_nodes (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    recipient_fingerprint TEXT NOT NULL,
    revoked_by BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL,
    affected TEXT NOT NULL
);
CREATE INDEX node_revocations_node_id ON node_revocations (node_id, id);
