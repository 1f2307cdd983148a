-- Templates a tenant imported from OCI images. Built-in templates (such as base) are not listed
-- here: every node provides them.
CREATE TABLE templates (
    tenant_id text NOT NULL REFERENCES tenants (id),
    name text NOT NULL,
    source text NOT NULL DEFAULT '',
    env jsonb NOT NULL DEFAULT '[]',
    workdir text NOT NULL DEFAULT '/',
    run_as text NOT NULL DEFAULT 'root',
    size_bytes bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
