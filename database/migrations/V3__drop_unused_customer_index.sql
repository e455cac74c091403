-- No query reads orders by customer, and every insert paid for this index: the benchmark
-- showed PostgreSQL as the largest CPU consumer on the write path. Re-create it together
-- with the query that needs it.
DROP INDEX IF EXISTS orders_customer_idx;
