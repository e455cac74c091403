-- Seed catalogue: ten products. ON CONFLICT keeps this safe if rows were created by hand first.
INSERT INTO inventory (product_id, product_name, available_quantity, reserved_quantity, total_quantity) VALUES
    ('PROD001', 'Laptop Pro 14',            100, 0, 100),
    ('PROD002', 'Wireless Mouse',           500, 0, 500),
    ('PROD003', 'Mechanical Keyboard',      300, 0, 300),
    ('PROD004', 'USB-C Hub',                400, 0, 400),
    ('PROD005', '27-inch Monitor',          150, 0, 150),
    ('PROD006', 'Noise-Cancelling Headset', 200, 0, 200),
    ('PROD007', 'Webcam 4K',                250, 0, 250),
    ('PROD008', 'Portable SSD 1TB',         350, 0, 350),
    ('PROD009', 'Standing Desk',             50, 0,  50),
    ('PROD010', 'Ergonomic Chair',           75, 0,  75)
ON CONFLICT (product_id) DO NOTHING;
