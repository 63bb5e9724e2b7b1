-- Uploaded certificates: public parts in plain PEM with parsed metadata; the private key only
-- as an age ciphertext sealed to the vault recipient named beside it.

CREATE TABLE certificates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id BIGINT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    uploaded_by BIGINT NOT NULL REFERENCES users (id),
    common_name TEXT NOT NULL,
    sans TEXT NOT NULL,
    domains_covered TEXT NOT NULL,
    issuer TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    fingerprint_sha256 TEXT NOT NULL,
    key_type TEXT NOT NULL,
    trusted BIGINT NOT NULL,
    chain_len BIGINT NOT NULL,
    warnings TEXT NOT NULL,
    chain_pem TEXT NOT NULL,
    sealed_key TEXT NOT NULL,
    vault_recipient TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (app_id, fingerprint_sha256)
);
CREATE INDEX certificates_app_id ON certificates (app_id, id);
CREATE INDEX certificates_vault_recipient ON certificates (vault_recipient, id);
CREATE INDEX certificates_not_after ON certificates (not_after);
