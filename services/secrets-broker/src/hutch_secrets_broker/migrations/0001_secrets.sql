-- Secrets (one row per tenant and name), their sealed versions, grants and the audit of resolutions.
CREATE TABLE secrets (
    tenant_id text NOT NULL,
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    version integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE secret_versions (
    tenant_id text NOT NULL,
    name text NOT NULL,
    version integer NOT NULL,
    ciphertext bytea NOT NULL,
    nonce bytea NOT NULL,
    wrapped_key bytea NOT NULL,
    wrap_nonce bytea NOT NULL,
    key_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, version),
    FOREIGN KEY (tenant_id, name) REFERENCES secrets (tenant_id, name) ON DELETE CASCADE
);
CREATE INDEX secret_versions_by_key ON secret_versions (key_id);

CREATE TABLE grants (
    id text PRIMARY KEY,
    tenant_id text NOT NULL,
    secret_name text NOT NULL,
    sandbox_ids text[] NOT NULL DEFAULT '{}',
    sandbox_names text[] NOT NULL DEFAULT '{}',
    labels jsonb NOT NULL DEFAULT '{}',
    hosts text[] NOT NULL,
    header text NOT NULL DEFAULT '',
    placeholder boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, secret_name) REFERENCES secrets (tenant_id, name) ON DELETE CASCADE
);
CREATE INDEX grants_by_tenant ON grants (tenant_id, secret_name);

CREATE TABLE audit (
    seq bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    secret_name text NOT NULL,
    version integer NOT NULL,
    sandbox_id text NOT NULL,
    host text NOT NULL,
    resolver text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_by_secret ON audit (tenant_id, secret_name, seq DESC);
