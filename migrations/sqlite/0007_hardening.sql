-- Hardening: HSTS per app (sent while it forces HTTPS; 0 turns it off), and settings that
-- belong to the installation (its id, which makes Message-IDs unique across installations).

ALTER TABLE apps ADD COLUMN hsts_max_age BIGINT NOT NULL DEFAULT 31536000;

CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
