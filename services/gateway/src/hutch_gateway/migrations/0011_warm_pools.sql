-- The owner of warm pool members until a create claims one (hutch.core.warm_pool). It has no API
-- keys, and its name is not one `admin create-tenant` accepts, so it is no one's tenant.
INSERT INTO tenants (id, name) VALUES ('warm-pool', '(warm pool)') ON CONFLICT DO NOTHING;

-- How many sandboxes of each kind the gateways of a region keep started ahead of demand.
CREATE TABLE warm_pools (
    region text NOT NULL,
    template text NOT NULL,
    isolation text NOT NULL,
    cpu_millis integer NOT NULL CHECK (cpu_millis > 0),
    memory_mb integer NOT NULL CHECK (memory_mb > 0),
    size integer NOT NULL CHECK (size > 0),
    PRIMARY KEY (region, template, isolation, cpu_millis, memory_mb)
);

-- A claim looks for a running member of one kind; the refill counts members of each kind.
CREATE INDEX sandboxes_warm_pool_members ON sandboxes (region, template, isolation, cpu_millis, memory_mb)
    WHERE tenant_id = 'warm-pool' AND state IN ('pending', 'running');
