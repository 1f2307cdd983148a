-- The usage ledger: one row per tenant, sandbox and minute (UTC). Quantities are integers in exact
-- units (see hutch_billing_meter.domain.quantities), so adding reports never rounds.
CREATE TABLE usage_minutes (
    tenant_id text NOT NULL,
    -- Empty for usage that belongs to the tenant and no sandbox.
    sandbox_id text NOT NULL,
    minute timestamptz NOT NULL,
    running_ms bigint NOT NULL DEFAULT 0,
    cpu_active_ns bigint NOT NULL DEFAULT 0,
    cpu_allocated_ns bigint NOT NULL DEFAULT 0,
    memory_provisioned_mib_ms bigint NOT NULL DEFAULT 0,
    memory_used_mib_ms bigint NOT NULL DEFAULT 0,
    -- A high-water mark: the largest reported, never a sum.
    memory_peak_bytes bigint NOT NULL DEFAULT 0,
    storage_byte_seconds bigint NOT NULL DEFAULT 0,
    egress_bytes bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, sandbox_id, minute)
);

CREATE INDEX usage_minutes_by_tenant_and_time ON usage_minutes (tenant_id, minute);

-- Every usage event already added to the ledger, written in the same transaction as its rows:
-- a redelivered or replayed event finds its id here and adds nothing. Ids older than the
-- retention (longer than any stream keeps events) are pruned.
CREATE TABLE processed_events (
    event_id text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX processed_events_by_time ON processed_events (processed_at);

-- What the sandbox lifecycle events say about each sandbox: its owner and metadata, for queries
-- by label.
CREATE TABLE sandboxes (
    sandbox_id text PRIMARY KEY,
    tenant_id text NOT NULL,
    name text NOT NULL DEFAULT '',
    template text NOT NULL DEFAULT '',
    cpu_millis integer NOT NULL DEFAULT 0,
    memory_mb integer NOT NULL DEFAULT 0,
    metadata jsonb NOT NULL DEFAULT '{}',
    requested_at timestamptz NOT NULL
);

CREATE INDEX sandboxes_by_tenant ON sandboxes (tenant_id);
CREATE INDEX sandboxes_by_metadata ON sandboxes USING gin (metadata jsonb_path_ops);
