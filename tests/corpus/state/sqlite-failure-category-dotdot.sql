UPDATE failures SET category = '../../x' WHERE product_id = 'p1';
