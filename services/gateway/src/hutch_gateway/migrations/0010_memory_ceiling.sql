-- Automatic memory: the most a sandbox's memory may grow to (0: a fixed limit, memory_mb).
ALTER TABLE sandboxes ADD COLUMN memory_ceiling_mb integer NOT NULL DEFAULT 0 CHECK (memory_ceiling_mb >= 0);
