-- When a sandbox's timeout fires (NULL: it lives until killed), and which of its ports the
-- preview edge serves without a token.
ALTER TABLE sandboxes ADD COLUMN expires_at timestamptz;
ALTER TABLE sandboxes ADD COLUMN public_ports integer[] NOT NULL DEFAULT '{}';
