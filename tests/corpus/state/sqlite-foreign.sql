-- A database of some other program.
CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT);
INSERT INTO moz_places (url) VALUES ('http://127.0.0.1:9/');
