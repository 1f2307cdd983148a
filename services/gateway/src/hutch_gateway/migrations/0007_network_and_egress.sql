-- What each sandbox may reach (see hutch.v1.NetworkPolicy), and the running totals of what it sent
-- where, as the egress-proxy reports them (egress.traffic); processed event ids make adding them
-- idempotent.
ALTER TABLE sandboxes ADD COLUMN network jsonb NOT NULL DEFAULT '{}';

CREATE TABLE egress_destinations (
    sandbox_id text NOT NULL,
    tenant_id text NOT NULL,
    destination text NOT NULL,
    bytes_out bigint NOT NULL DEFAULT 0,
    bytes_in bigint NOT NULL DEFAULT 0,
    requests bigint NOT NULL DEFAULT 0,
    refused bigint NOT NULL DEFAULT 0,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (sandbox_id, destination)
);
CREATE INDEX egress_destinations_by_tenant ON egress_destinations (tenant_id, sandbox_id);

CREATE TABLE egress_events (
    event_id text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
