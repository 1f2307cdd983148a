-- Sleep on idle: how long a sandbox may sit idle before its node reports it (0: never), and
-- whether its pause was a sleep (any request wakes it) rather than a pause call.
ALTER TABLE sandboxes
    ADD COLUMN auto_sleep_after_s integer NOT NULL DEFAULT 0 CHECK (auto_sleep_after_s >= 0),
    ADD COLUMN asleep boolean NOT NULL DEFAULT false;
