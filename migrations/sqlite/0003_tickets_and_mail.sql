-- Provisioning tickets, their timeline (state changes and comments), and the durable mail outbox.

CREATE TABLE tickets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id BIGINT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('provision', 'update', 'rollback', 'remove')),
    state TEXT NOT NULL CHECK (state IN ('open', 'approved', 'deploying', 'deployed', 'failed', 'rejected', 'cancelled')),
    certificate_id BIGINT REFERENCES certificates (id) ON DELETE CASCADE,
    opened_by BIGINT NOT NULL REFERENCES users (id),
    reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- At most one open ticket per app and kind.
CREATE UNIQUE INDEX tickets_one_open ON tickets (app_id, kind) WHERE state = 'open';
CREATE INDEX tickets_state ON tickets (state, id);
CREATE INDEX tickets_app_id ON tickets (app_id, id);

CREATE TABLE ticket_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id BIGINT NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    occurred_at BIGINT NOT NULL,
    actor_id BIGINT REFERENCES users (id),
    kind TEXT NOT NULL CHECK (kind IN ('state', 'comment')),
    from_state TEXT,
    to_state TEXT,
    body TEXT
);
CREATE INDEX ticket_events_ticket_id ON ticket_events (ticket_id, id);

CREATE TABLE mail_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    to_address TEXT NOT NULL,
    subject TEXT NOT NULL,
    text_body TEXT NOT NULL,
    html_body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX mail_outbox_due ON mail_outbox (state, next_attempt_at);
