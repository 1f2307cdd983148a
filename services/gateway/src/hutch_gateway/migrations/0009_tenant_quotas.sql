-- Per-tenant concurrency quotas: live (pending, running or stopping) sandboxes and the vCPUs and
-- memory they hold. 0: the gateway's default (GatewayOptions.tenant_max_*), itself 0 = unlimited.
ALTER TABLE tenants
    ADD COLUMN max_sandboxes integer NOT NULL DEFAULT 0 CHECK (max_sandboxes >= 0),
    ADD COLUMN max_cpu_millis integer NOT NULL DEFAULT 0 CHECK (max_cpu_millis >= 0),
    ADD COLUMN max_memory_mb integer NOT NULL DEFAULT 0 CHECK (max_memory_mb >= 0);
