-- Custody closed against replay and reuse: one identity, one slot, and an identity once
-- revoked is refused forever; only confirmed addresses are published; a revoked node's
-- credential lives on only to tell it to wipe what it holds.

-- The address the confirming admin (or the fleet key) saw: published only while it still is.
ALTER TABLE edge_nodes ADD COLUMN confirmed_address TEXT;
UPDATE edge_nodes SET confirmed_address = address WHERE state = 'confirmed';
-- What a fleet attestation named (pair, slot, expiry) as JSON, for the pages.
ALTER TABLE edge_nodes ADD COLUMN attestation TEXT;

-- A recipient held by two slots (a copied identity) keeps its first slot; the others start over.
DELETE FROM node_keys WHERE node_id IN (SELECT n.id FROM edge_nodes n
    WHERE n.recipient IS NOT NULL AND EXISTS (SELECT 1 FROM edge_nodes o WHERE o.recipient = n.recipient AND o.id < n.id));
DELETE FROM platform_node_keys WHERE node_id IN (SELECT n.id FROM edge_nodes n
    WHERE n.recipient IS NOT NULL AND EXISTS (SELECT 1 FROM edge_nodes o WHERE o.recipient = n.recipient AND o.id < n.id));
UPDATE edge_nodes SET state = 'awaiting', recipient = NULL, node_token_hash = NULL, enroll_token_hash = NULL,
    address = NULL, http_address = NULL, confirmed_by = NULL, confirmed_via = NULL, confirmed_at = NULL,
    confirmed_address = NULL
    WHERE recipient IS NOT NULL AND EXISTS (SELECT 1 FROM edge_nodes o WHERE o.recipient = edge_nodes.recipient AND o.id < edge_nodes.id);
CREATE UNIQUE INDEX edge_nodes_recipient ON edge_nodes (recipient);

CREATE INDEX node_revocations_fingerprint ON node_revocations (recipient_fingerprint);

-- The node token of a revoked node: it answers only "wipe what you hold".
CREATE TABLE node_wipe_orders (
    token_hash TEXT PRIMARY KEY,
    node_id BIGINT NOT NULL REFERENCES edge_nodes (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
