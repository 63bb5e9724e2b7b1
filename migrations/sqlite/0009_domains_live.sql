-- Domains that go live: a claim is `pending` until its owner proves control of the name (a
-- TXT record with the claim's token), then `verified`; an unproven claim `expired` after 7
-- days. Several customers may claim a name while it is pending; only one claim of a name may
-- be verified (the partial unique index), and only verified domains are published to edges.
-- Each domain also remembers what its DNS last pointed at. Domains that existed before this
-- migration were already live, so they are kept as verified.

CREATE TABLE domains_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id BIGINT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    hostname TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    verification_state TEXT NOT NULL CHECK (verification_state IN ('pending', 'verified', 'expired')),
    verification_token TEXT,
    verification_expires_at BIGINT NOT NULL,
    verification_checked_at BIGINT,
    verification_error TEXT,
    verified_at BIGINT,
    verified_by TEXT,
    dns_state TEXT NOT NULL DEFAULT 'unchecked' CHECK (dns_state IN ('unchecked', 'no_record', 'points_here', 'points_elsewhere')),
    dns_seen TEXT,
    dns_checked_at BIGINT,
    dns_error TEXT,
    UNIQUE (app_id, hostname)
);

INSERT INTO domains_v2 (app_id, hostname, created_at, verification_state, verification_expires_at, verified_at, verified_by)
SELECT app_id, hostname, created_at, 'verified', created_at, created_at, 'existing domain' FROM domains ORDER BY id;

DROP TABLE domains;
ALTER TABLE domains_v2 RENAME TO domains;

CREATE UNIQUE INDEX domains_verified_hostname ON domains (hostname) WHERE verification_state = 'verified';
CREATE INDEX domains_app_id ON domains (app_id, id);
CREATE INDEX domains_hostname ON domains (hostname);
CREATE INDEX domains_dns_due ON domains (dns_checked_at);
CREATE INDEX domains_pending ON domains (verification_state, verification_checked_at);

-- One row that claim decisions lock, so two overlapping claims are never verified at once.
INSERT INTO settings (name, value) VALUES ('domain_claims_lock', '0');

-- The platform hostname's wildcard certificate (`*.<CERTDROP_APPS_DOMAIN>`), uploaded by an
-- admin: its key sealed to the vault, and to each confirmed node of a pair that holds an app.
CREATE TABLE platform_certificates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    apps_domain TEXT NOT NULL,
    uploaded_by BIGINT NOT NULL REFERENCES users (id),
    common_name TEXT NOT NULL,
    sans TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    fingerprint_sha256 TEXT NOT NULL,
    chain_pem TEXT NOT NULL,
    sealed_key TEXT NOT NULL,
    vault_recipient TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX platform_certificates_domain ON platform_certificates (apps_domain, id);
CREATE INDEX platform_certificates_vault_recipient ON platform_certificates (vault_recipient, id);

CREATE TABLE platform_node_keys (
    platform_certificate_id BIGINT NOT NULL REFERENCES platform_certificates (id) ON DELETE CASCADE,
    node_id BIGINT NOT NULL REFERENCES edge_nodes (id) ON DELETE CASCADE,
    sealed_key TEXT NOT NULL,
    PRIMARY KEY (platform_certificate_id, node_id)
);
CREATE INDEX platform_node_keys_node_id ON platform_node_keys (node_id);
