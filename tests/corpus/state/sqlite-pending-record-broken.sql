UPDATE products SET record = '{"id": "p2", "main_im' WHERE id = 'p2';
