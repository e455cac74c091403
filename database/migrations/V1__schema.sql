-- Inventory: one row per product. The CHECK constraints make overselling impossible
-- even for buggy code: any UPDATE that would break them fails the whole transaction.
CREATE TABLE inventory (
    product_id          TEXT PRIMARY KEY CHECK (char_length(product_id) BETWEEN 1 AND 64),
    product_name        TEXT NOT NULL,
    available_quantity  BIGINT NOT NULL CHECK (available_quantity >= 0),
    reserved_quantity   BIGINT NOT NULL DEFAULT 0 CHECK (reserved_quantity >= 0),
    total_quantity      BIGINT NOT NULL CHECK (total_quantity >= 0),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT inventory_quantities_add_up
        CHECK (available_quantity + reserved_quantity = total_quantity)
);

-- Orders: one row per order_id, ever. The primary key is what makes redelivered
-- Kafka messages harmless (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE orders (
    order_id      UUID PRIMARY KEY,
    customer_id   TEXT NOT NULL CHECK (char_length(customer_id) BETWEEN 1 AND 64),
    product_id    TEXT NOT NULL CHECK (char_length(product_id) BETWEEN 1 AND 64),
    quantity      INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
    amount        NUMERIC(12, 2) NOT NULL CHECK (amount >= 0),
    status        TEXT NOT NULL CHECK (status IN ('reserved', 'rejected')),
    reason        TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    processed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT orders_reason_matches_status
        CHECK ((status = 'reserved') = (reason IS NULL))
);

-- Not a foreign key on purpose: orders for unknown products are recorded as rejected.
CREATE INDEX orders_product_status_idx ON orders (product_id, status);
CREATE INDEX orders_customer_idx ON orders (customer_id);
