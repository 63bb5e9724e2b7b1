-- Edge pairs and their nodes, what each pair serves, deploy jobs, handshake verifications and
-- each app's deployment history (for rollback).

CREATE TABLE edge_pairs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    -- The app this pair is dedicated to; NULL when the pair is free.
    app_id BIGINT UNIQUE REFERENCES apps (id),
    -- What the pair's nodes must serve: bumped on every change they must apply.
    config_version BIGINT NOT NULL DEFAULT 0,
    certificate_id BIGINT REFERENCES certificates (id),
    created_at BIGINT NOT NULL
);

CREATE TABLE edge_nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id BIGINT NOT NULL REFERENCES edge_pairs (id) ON DELETE CASCADE,
    slot BIGINT NOT NULL,
    enroll_token_hash TEXT UNIQUE,
    node_token_hash TEXT UNIQUE,
    recipient TEXT,
    address TEXT,
    http_address TEXT,
    enrolled_at BIGINT,
    last_seen_at BIGINT,
    applied_version BIGINT NOT NULL DEFAULT 0,
    UNIQUE (pair_id, slot)
);

-- A certificate's key sealed to one node's own age recipient (never to the vault's).
CREATE TABLE node_keys (
    node_id BIGINT NOT NULL REFERENCES edge_nodes (id) ON DELETE CASCADE,
    certificate_id BIGINT NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    sealed_key TEXT NOT NULL,
    PRIMARY KEY (node_id, certificate_id)
);

CREATE TABLE deploy_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id BIGINT NOT NULL UNIQUE REFERENCES tickets (id) ON DELETE CASCADE,
    pair_id BIGINT NOT NULL REFERENCES edge_pairs (id),
    -- NULL for a removal.
    target_certificate_id BIGINT REFERENCES certificates (id) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done')),
    -- The configuration version this job published, so a retried job never publishes twice.
    config_version BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    lease_until BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX deploy_jobs_state ON deploy_jobs (state, lease_until);

CREATE TABLE verifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id BIGINT NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    node_id BIGINT NOT NULL REFERENCES edge_nodes (id) ON DELETE CASCADE,
    hostname TEXT NOT NULL,
    fingerprint_sha256 TEXT,
    verified_at BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX verifications_ticket_id ON verifications (ticket_id, id);

-- What each app served after each deployed ticket; certificate_id NULL after a removal.
CREATE TABLE app_deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id BIGINT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    certificate_id BIGINT REFERENCES certificates (id) ON DELETE CASCADE,
    ticket_id BIGINT NOT NULL UNIQUE REFERENCES tickets (id) ON DELETE CASCADE,
    deployed_at BIGINT NOT NULL
);
CREATE INDEX app_deployments_app_id ON app_deployments (app_id, id);
