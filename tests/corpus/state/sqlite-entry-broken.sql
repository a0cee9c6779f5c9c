UPDATE products SET entry = '["images/p1/main_1.jpg"]' WHERE id = 'p1';
