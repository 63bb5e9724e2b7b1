-- Billing events: append-only, one per billable change, each with an idempotency key derived
-- from what caused it (so a retried deployment can never bill twice). Names are copied in so
-- the history survives the deletion of an app or a pair.

CREATE TABLE billing_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('edge_pair.provisioned', 'edge_pair.released')),
    customer_id BIGINT NOT NULL,
    customer_email TEXT NOT NULL,
    app_id BIGINT NOT NULL,
    app TEXT NOT NULL,
    pair_id BIGINT NOT NULL,
    pair TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    unit_price_cents BIGINT NOT NULL,
    currency TEXT NOT NULL
);
CREATE INDEX billing_events_occurred_at ON billing_events (occurred_at, id);
CREATE INDEX billing_events_customer ON billing_events (customer_id, occurred_at);
CREATE INDEX billing_events_holding ON billing_events (app_id, pair_id, occurred_at, id);
