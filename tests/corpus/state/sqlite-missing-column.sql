ALTER TABLE images DROP COLUMN relpath;
