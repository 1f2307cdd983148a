-- The ledger holds the usage of every region of the installation: each minute row and each processed
-- event keeps the region whose stream it came from. Rows from before have '' (this region's own).
ALTER TABLE usage_minutes ADD COLUMN region text NOT NULL DEFAULT '';
ALTER TABLE usage_minutes DROP CONSTRAINT usage_minutes_pkey;
ALTER TABLE usage_minutes ADD PRIMARY KEY (tenant_id, sandbox_id, region, minute);

-- Event ids are unique across regions, so the id alone still tells a duplicate, whichever region's
-- stream brought it.
ALTER TABLE processed_events ADD COLUMN region text NOT NULL DEFAULT '';
