-- Isolation classes: what each sandbox runs under, and what each tenant may use.
ALTER TABLE sandboxes ADD COLUMN isolation text NOT NULL DEFAULT 'container'
    CHECK (isolation IN ('container', 'gvisor'));

ALTER TABLE tenants ADD COLUMN allowed_isolation text[] NOT NULL DEFAULT '{container,gvisor}';
ALTER TABLE tenants ADD COLUMN default_trust text NOT NULL DEFAULT 'trusted'
    CHECK (default_trust IN ('trusted', 'untrusted'));
