-- The hutch.sandboxes gauge counts live sandboxes by state every export interval: with this
-- partial index that reads the live rows only, however many ended ones the table keeps.
CREATE INDEX sandboxes_live_by_state ON sandboxes (state) WHERE state NOT IN ('killed', 'failed');
