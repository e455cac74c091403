-- One row per running consumer, upserted once a second with a JSON report of itself
-- (partitions, lag, outcome counters, latency, busiest products), read by the producer's
-- dashboard. Consumers are scaled with no fixed ports, so they report here instead of
-- being asked. UNLOGGED: the rows are rewritten every second and worth nothing after a
-- crash, so they skip the WAL; PostgreSQL empties the table after a crash restart.
CREATE UNLOGGED TABLE consumer_status (
    member_id   TEXT PRIMARY KEY,
    report      JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
