CREATE TABLE tenants (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored as SHA-256 hashes: keys are long random strings, so a fast hash is enough
-- to make a leaked table useless, and lookups stay a single index probe.
CREATE TABLE api_keys (
    id text PRIMARY KEY,
    tenant_id text NOT NULL REFERENCES tenants (id),
    key_hash text NOT NULL UNIQUE,
    -- The key's first characters, to tell keys apart in listings without storing them.
    prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE sandboxes (
    id text PRIMARY KEY,
    tenant_id text NOT NULL REFERENCES tenants (id),
    name text NOT NULL DEFAULT '',
    template text NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'running', 'stopping', 'killed', 'failed')),
    cpu_millis integer NOT NULL,
    memory_mb integer NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    timeout_seconds integer NOT NULL DEFAULT 0,
    region text NOT NULL,
    node_id text,
    error_code text NOT NULL DEFAULT '',
    state_reason text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    ended_at timestamptz
);

-- A name belongs to at most one live sandbox of a tenant; ended sandboxes free their name.
CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes (tenant_id, name)
    WHERE name <> '' AND state NOT IN ('killed', 'failed');
CREATE INDEX sandboxes_by_tenant ON sandboxes (tenant_id, created_at DESC, id);
CREATE INDEX sandboxes_metadata ON sandboxes USING gin (metadata);
