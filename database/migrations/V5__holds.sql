-- Holds that end (issue #10): a reservation is confirmed (sold), cancelled or expires.

-- Stock: what was received (initial stock plus restocks) is always on hand (available),
-- held (reserved) or sold. `total_quantity` stays what is on hand, so the existing CHECK
-- `available + reserved = total` keeps its meaning; confirm moves units out of it into sold.
ALTER TABLE inventory
    ADD COLUMN sold_quantity BIGINT NOT NULL DEFAULT 0 CONSTRAINT inventory_sold_quantity_check CHECK (sold_quantity >= 0),
    ADD COLUMN received_quantity BIGINT;
UPDATE inventory SET received_quantity = total_quantity;
ALTER TABLE inventory
    ALTER COLUMN received_quantity SET NOT NULL,
    ADD CONSTRAINT inventory_received_quantity_check CHECK (received_quantity >= 0),
    -- Every unit ever received is on hand or sold: a transition that loses or invents a unit
    -- fails its whole transaction.
    ADD CONSTRAINT inventory_received_adds_up CHECK (total_quantity + sold_quantity = received_quantity);

-- Orders: the lifecycle states, when the hold ends, and when and why the status last changed.
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('reserved', 'rejected', 'confirmed', 'cancelled', 'expired'));
-- `reason` is now the why of the last change: NULL only while reserved; a rejection's
-- reason (insufficient_stock, unknown_product), or confirm_command, cancel_command,
-- hold_expired.
ALTER TABLE orders DROP CONSTRAINT orders_reason_matches_status;
ALTER TABLE orders ADD CONSTRAINT orders_reason_matches_status CHECK ((status = 'reserved') = (reason IS NULL));
-- NULL for rejected orders and for holds taken before this migration: those had no end, and
-- they keep none (they can still be confirmed or cancelled, and never expire by themselves).
ALTER TABLE orders ADD COLUMN expires_at TIMESTAMPTZ;
ALTER TABLE orders ADD COLUMN status_changed_at TIMESTAMPTZ;
UPDATE orders SET status_changed_at = processed_at;
-- The consumer always sets it; the default serves rows written by hand (like processed_at's).
ALTER TABLE orders ALTER COLUMN status_changed_at SET NOT NULL, ALTER COLUMN status_changed_at SET DEFAULT now();

-- The expiry sweeper's index: only live holds, by deadline, with the product so that
-- "which products have holds due" is answered from the index alone. It is written on the
-- hot insert path (every reserved order); README Performance has its measured cost.
CREATE INDEX orders_holds_due_idx ON orders (expires_at, product_id) WHERE status = 'reserved';

-- Confirm and cancel commands, one row per command_id: a redelivered command finds its
-- decision here instead of being decided again, GET /orders/{id} shows them (refusals
-- included), and a command whose order is not known yet waits here as `pending`.
CREATE TABLE order_commands (
    command_id   UUID PRIMARY KEY,
    order_id     UUID NOT NULL,
    customer_id  TEXT NOT NULL CHECK (char_length(customer_id) BETWEEN 1 AND 64),
    kind         TEXT NOT NULL CHECK (kind IN ('confirm', 'cancel')),
    outcome      TEXT NOT NULL CHECK (outcome IN ('pending', 'applied', 'refused')),
    reason       TEXT,
    issued_at    TIMESTAMPTZ NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    decided_at   TIMESTAMPTZ,
    CONSTRAINT order_commands_reason_matches_outcome CHECK ((outcome = 'refused') = (reason IS NOT NULL)),
    CONSTRAINT order_commands_decided_matches_outcome CHECK ((outcome = 'pending') = (decided_at IS NULL))
);
CREATE INDEX order_commands_order_idx ON order_commands (order_id);
-- Placement looks up parked commands of its orders through this; it holds only the pending
-- ones, normally none, so the lookup costs an index probe of an empty index per order.
CREATE INDEX order_commands_pending_idx ON order_commands (order_id) WHERE outcome = 'pending';

-- Events of changes that no Kafka offset holds back (expiry sweeps, parked commands applied
-- at placement, refusals of parked commands): written in the transaction of the change,
-- published by a relay, deleted once the broker acknowledged them.
CREATE TABLE order_events_outbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     UUID NOT NULL,
    customer_id  TEXT NOT NULL,
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
