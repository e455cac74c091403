-- Idempotency-Key support for POST /order and POST /orders/batch, shared by every producer
-- instance and surviving restarts. `orders` holds the placed orders (ids and placed_at) so
-- that a retry re-publishes exactly the same messages, never new ones.
CREATE TABLE idempotency_keys (
    idempotency_key  TEXT PRIMARY KEY CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     BYTEA NOT NULL,
    orders           JSONB NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'accepted')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Expiry sweeps by age.
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
