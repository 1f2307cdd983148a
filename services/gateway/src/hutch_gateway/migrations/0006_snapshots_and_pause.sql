-- Snapshots, pause/resume and forks.
ALTER TABLE sandboxes DROP CONSTRAINT sandboxes_state_check;
ALTER TABLE sandboxes ADD CONSTRAINT sandboxes_state_check
    CHECK (state IN ('pending', 'running', 'stopping', 'killed', 'failed', 'paused'));

-- The snapshot it was created from (Create with a snapshot, or a fork's snapshot), and the sandbox
-- a fork's child was forked from.
ALTER TABLE sandboxes ADD COLUMN source_snapshot text NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN forked_from text NOT NULL DEFAULT '';
-- Its latest pause snapshot: the one that holds it while paused (or resuming), deleted when it is
-- paused again or ends. paused_node is where that pause happened: the node that holds a copy.
ALTER TABLE sandboxes ADD COLUMN paused_snapshot text NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN paused_node text;
-- The snapshot its current start is from ('' for a plain create): the node's and the scheduler's
-- events of that start carry it in their ids, which tells them apart from an earlier start's.
ALTER TABLE sandboxes ADD COLUMN incarnation text NOT NULL DEFAULT '';
-- Paused time does not count against the timeout: what was left of it when paused, applied again
-- from the moment it runs once more.
ALTER TABLE sandboxes ADD COLUMN timeout_left_s integer;
-- What its processes start with, kept to start it again (resume) or to copy it (fork).
ALTER TABLE sandboxes ADD COLUMN envs jsonb NOT NULL DEFAULT '{}';

CREATE INDEX sandboxes_paused_snapshot ON sandboxes (tenant_id, paused_snapshot) WHERE paused_snapshot <> '';
