-- A snapshot imported from another region's snapshot-store keeps its id, name and metadata; this
-- says where it came from (NULL for a snapshot written here).
ALTER TABLE snapshots ADD COLUMN copied_from_region text;
