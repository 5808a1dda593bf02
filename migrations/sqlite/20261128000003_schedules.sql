-- Cron schedules (`renderq schedule add`); times in Unix ms.
CREATE TABLE schedules (
    name           TEXT PRIMARY KEY,
    cron           TEXT NOT NULL,
    timezone       TEXT NOT NULL DEFAULT 'UTC',
    file           TEXT NOT NULL,
    queue          TEXT NOT NULL,
    options        TEXT NOT NULL DEFAULT '{}',
    created_at     INTEGER NOT NULL,
    last_fired_for INTEGER
);
