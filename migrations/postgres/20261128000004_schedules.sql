-- Cron schedules (`renderq schedule add`). `options` holds the submit options the
-- file is read with; `last_fired_for` the latest firing time a scheduler handled.
CREATE TABLE renderq.schedules (
    name           text PRIMARY KEY,
    cron           text NOT NULL,
    timezone       text NOT NULL DEFAULT 'UTC',
    file           text NOT NULL,
    queue          text NOT NULL,
    options        jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_fired_for timestamptz
);
