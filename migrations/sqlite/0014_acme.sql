-- Automatic certificates over ACME (RFC 8555). The account key and every certificate key are
-- generated here and sealed in the vault at birth; the challenges are published to the app's
-- own edge pair through its configuration; renewal and the fallback on an uploaded
-- certificate's expiry or removal run as tickets that certdrop opens itself.

CREATE TABLE acme_accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- One account per directory URL.
    directory TEXT NOT NULL UNIQUE,
    account_url TEXT NOT NULL,
    -- instant-acme's account credentials (the account key within), sealed to the vault.
    sealed_credentials TEXT NOT NULL,
    vault_recipient TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One issuance per ticket asking for an ACME certificate; a retry runs it again (`run`).
CREATE TABLE acme_orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id BIGINT NOT NULL UNIQUE REFERENCES tickets (id) ON DELETE CASCADE,
    app_id BIGINT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    pair_id BIGINT NOT NULL REFERENCES edge_pairs (id),
    -- The certificate this one replaces (renewal, fallback), if any.
    replaces_certificate_id BIGINT REFERENCES certificates (id) ON DELETE SET NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    run BIGINT NOT NULL DEFAULT 1,
    attempts BIGINT NOT NULL DEFAULT 0,
    -- Transient failures (the CA unreachable, rate limited) wait and try again.
    not_before BIGINT NOT NULL DEFAULT 0,
    lease_until BIGINT NOT NULL DEFAULT 0,
    -- The CA's order URL, so a worker that dies mid-way resumes the same order.
    order_url TEXT,
    -- The key born for this order (generated_keys.purpose = 'acme').
    generated_key_id BIGINT REFERENCES generated_keys (id) ON DELETE SET NULL,
    certificate_id BIGINT REFERENCES certificates (id) ON DELETE SET NULL,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX acme_orders_state ON acme_orders (state, not_before);
CREATE INDEX acme_orders_app ON acme_orders (app_id, id);

-- What a pair's nodes answer to the CA while an order is validated (public by design: the CA
-- fetches it over plain HTTP).
CREATE TABLE acme_challenges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id BIGINT NOT NULL REFERENCES acme_orders (id) ON DELETE CASCADE,
    pair_id BIGINT NOT NULL REFERENCES edge_pairs (id),
    kind TEXT NOT NULL CHECK (kind IN ('http-01', 'tls-alpn-01')),
    hostname TEXT NOT NULL,
    token TEXT NOT NULL,
    key_authorization TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX acme_challenges_pair ON acme_challenges (pair_id);

-- What a ticket deploys: an uploaded (or CSR) certificate, or one certdrop obtains over ACME.
ALTER TABLE tickets ADD COLUMN source TEXT NOT NULL DEFAULT 'uploaded';
-- NULL: opened by the customer; 'renewal' or 'fallback': opened by certdrop itself.
ALTER TABLE tickets ADD COLUMN automatic TEXT;
-- What a born key is for: a CSR handed to the customer, or an ACME order.
ALTER TABLE generated_keys ADD COLUMN purpose TEXT NOT NULL DEFAULT 'csr';
-- When an ACME certificate is renewed (two thirds of its life, or the CA's renewal window).
ALTER TABLE certificates ADD COLUMN renews_at BIGINT;
-- An app serving an uploaded certificate gets an ACME one when it nears expiry or is removed.
ALTER TABLE apps ADD COLUMN acme_fallback BIGINT NOT NULL DEFAULT 1;
-- A certificate its owner removed: its key is wiped from the vault, it is never deployed
-- again; a served one is first replaced (by the ACME fallback).
ALTER TABLE certificates ADD COLUMN removed_at BIGINT;
