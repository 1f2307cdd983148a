-- A sandbox is placed once per start: a resumed one starts again under the same id, from the
-- snapshot its pause took. The incarnation names that snapshot ('' for the first start), so a
-- redelivered request is recognised without mistaking a resume for one.
ALTER TABLE placements ADD COLUMN incarnation text NOT NULL DEFAULT '';
ALTER TABLE placements DROP CONSTRAINT placements_pkey;
ALTER TABLE placements ADD PRIMARY KEY (sandbox_id, incarnation);
