-- Per-tenant data keys, wrapped (AES-256-GCM) by the master key named by master_key_id.
CREATE TABLE tenant_keys (
    tenant_id text PRIMARY KEY,
    wrapped_key bytea NOT NULL,
    master_key_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz
);

CREATE TABLE snapshots (
    id text PRIMARY KEY,
    tenant_id text NOT NULL,
    -- NULL when the snapshot has no name; unique per tenant otherwise (pending ones included).
    name text,
    sandbox_id text NOT NULL DEFAULT '',
    kind smallint NOT NULL,
    purpose smallint NOT NULL,
    parent_id text NOT NULL DEFAULT '',
    spec bytea NOT NULL DEFAULT '',
    labels jsonb NOT NULL DEFAULT '{}',
    state text NOT NULL CHECK (state IN ('pending', 'committed')),
    -- Pending only: dropped by garbage collection after this.
    lease_expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    committed_at timestamptz,
    logical_bytes bigint NOT NULL DEFAULT 0,
    new_stored_bytes bigint NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX snapshots_name ON snapshots (tenant_id, name) WHERE name IS NOT NULL;
CREATE INDEX snapshots_listing ON snapshots (tenant_id, created_at, id) WHERE state = 'committed';
CREATE INDEX snapshots_pending_lease ON snapshots (lease_expires_at) WHERE state = 'pending';

-- The ordered chunk list of each stream: 32-byte BLAKE3 digests packed end to end, and their sizes.
CREATE TABLE snapshot_streams (
    snapshot_id text NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    position integer NOT NULL,
    name text NOT NULL,
    size bigint NOT NULL,
    hashes bytea NOT NULL,
    sizes integer[] NOT NULL,
    PRIMARY KEY (snapshot_id, position)
);

-- A chunk of a tenant, stored in S3 as chunks/<tenant>/<hash[:2]>/<hash>.<generation>. The row is
-- written only after its object; `refs` counts the committed snapshots that use it.
CREATE TABLE chunks (
    tenant_id text NOT NULL,
    hash bytea NOT NULL,
    generation text NOT NULL,
    size integer NOT NULL,
    stored_size integer NOT NULL,
    refs integer NOT NULL DEFAULT 0 CHECK (refs >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- When refs last dropped to 0 (or creation): the grace period counts from here.
    unreferenced_since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, hash)
);

CREATE INDEX chunks_collectable ON chunks (unreferenced_since) WHERE refs = 0;

-- Chunks a pending snapshot relies on (found present, or uploaded for it): not collectable.
CREATE TABLE pins (
    snapshot_id text NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    tenant_id text NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (snapshot_id, hash)
);

CREATE INDEX pins_by_chunk ON pins (tenant_id, hash);

-- Objects to delete from S3, once `delete_after` has passed. Two kinds of entries:
-- * collected chunks: queued in the transaction that drops the chunk row, due at once;
-- * uploads: queued before an object is written, due after the orphan grace period, and removed in
--   the transaction that records the chunk row. A store that dies mid-upload leaves the entry, so
--   its object is found and deleted later without listing the bucket.
CREATE TABLE object_deletions (
    object_key text PRIMARY KEY,
    tenant_id text NOT NULL,
    -- 'collected' or 'upload'.
    reason text NOT NULL,
    delete_after timestamptz NOT NULL
);

CREATE INDEX object_deletions_due ON object_deletions (delete_after);
