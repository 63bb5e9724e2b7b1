-- Each step of a ticket's deployment as it happens (approved, deploying, key sealed and
-- configuration published, each node applied, each handshake, deployed or failed), in
-- milliseconds, for the live progress on the ticket and app pages.

CREATE TABLE deploy_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id BIGINT NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    label TEXT NOT NULL,
    ok BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    UNIQUE (ticket_id, step)
);
