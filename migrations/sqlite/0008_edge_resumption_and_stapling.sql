-- What makes the edge fast for returning visitors and for their revocation checks: each
-- pair's TLS session ticket keys (sealed at birth to both confirmed nodes of the pair; the
-- control plane keeps no way to open them), and the OCSP staples of the certificates served.

CREATE TABLE ticket_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id BIGINT NOT NULL REFERENCES edge_pairs (id) ON DELETE CASCADE,
    -- 48 random bytes (a 16-byte key name, a 32-byte AES-256-GCM-SIV key), age-sealed to the
    -- recipients of the pair's two confirmed nodes.
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ticket_keys_pair_id ON ticket_keys (pair_id, id);

CREATE TABLE ocsp_staples (
    certificate_id BIGINT PRIMARY KEY REFERENCES certificates (id) ON DELETE CASCADE,
    -- NULL when the certificate names no OCSP responder: nothing to fetch, ever.
    responder_url TEXT,
    -- The latest good response (base64 of its DER) and its validity window.
    response TEXT,
    this_update BIGINT,
    next_update BIGINT,
    fetched_at BIGINT,
    -- When to fetch again: halfway through the validity, or after a failure, with backoff.
    refresh_at BIGINT NOT NULL,
    failures BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX ocsp_staples_refresh_at ON ocsp_staples (refresh_at);
