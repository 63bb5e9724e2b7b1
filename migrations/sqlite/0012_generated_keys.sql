-- Keys born in the vault: certdrop generates a key for an app, seals it at once, and hands the
-- customer a certificate signing request (CSR) for their CA. Uploading the signed certificate
-- alone completes the bundle: the certificate is matched to its key by the public key.

CREATE TABLE generated_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id BIGINT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    created_by BIGINT NOT NULL REFERENCES users (id),
    key_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    -- JSON array of the names the CSR asks for.
    domains TEXT NOT NULL,
    csr_pem TEXT NOT NULL,
    -- Hex SHA-256 of the subjectPublicKey bits: what a certificate is matched by.
    public_key_sha256 TEXT NOT NULL UNIQUE,
    sealed_key TEXT NOT NULL,
    vault_recipient TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- The certificate that completed it, once uploaded.
    certificate_id BIGINT REFERENCES certificates (id) ON DELETE SET NULL
);
CREATE INDEX generated_keys_app ON generated_keys (app_id, id);

-- Where a certificate came from: 'uploaded' (with its key) or 'csr' (its key generated here).
ALTER TABLE certificates ADD COLUMN source TEXT NOT NULL DEFAULT 'uploaded';
