-- The scheduler's ledger: which sandbox holds how much of which node.
CREATE TABLE placements (
    sandbox_id text PRIMARY KEY,
    tenant_id text NOT NULL,
    -- NULL when the sandbox could not be placed.
    node_id text,
    cpu_millis integer NOT NULL,
    memory_mb integer NOT NULL,
    active boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);

CREATE INDEX placements_active_by_node ON placements (node_id) WHERE active;
