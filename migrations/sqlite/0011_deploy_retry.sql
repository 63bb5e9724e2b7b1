-- A failed deployment can be retried by staff: the ticket's one job is queued again as its next
-- run (1, then 2 after the first retry; `attempts` still counts claims by workers). Handshake
-- results say which run they belong to, so a ticket's page shows the nodes' outcome of the run
-- under way, and earlier runs stay on record.

ALTER TABLE deploy_jobs ADD COLUMN run BIGINT NOT NULL DEFAULT 1;
ALTER TABLE verifications ADD COLUMN run BIGINT NOT NULL DEFAULT 1;
