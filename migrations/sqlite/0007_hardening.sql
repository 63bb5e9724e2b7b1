-- Hardening: HSTS per app (sent while it forces HTTPS; 0 turns it off).

ALTER TABLE apps ADD COLUMN hsts_max_age BIGINT NOT NULL DEFAULT 31536000;
