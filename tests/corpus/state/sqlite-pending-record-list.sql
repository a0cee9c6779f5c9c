UPDATE products SET record = '[1, 2]' WHERE id = 'p2';
