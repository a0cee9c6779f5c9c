"""The SQLite store's schema and every statement it runs."""

from __future__ import annotations

# The comments stay in sqlite_master, for whoever opens the file in a sqlite3 shell.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS products (
        seq INTEGER PRIMARY KEY,  -- order added; rows are never deleted
        id TEXT NOT NULL UNIQUE,
        done_seq INTEGER,         -- order completed; NULL while pending
        record TEXT,              -- the input record as JSON, while pending
        entry TEXT                -- the mapping entry as JSON, once completed
    )""",
    # (done_seq, seq) order: pending products (NULL) in the order they were added,
    # then completed ones in completion order.
    "CREATE INDEX IF NOT EXISTS products_done ON products (done_seq)",
    """CREATE TABLE IF NOT EXISTS images (  -- saved images of unfinished products
        product_id TEXT NOT NULL,
        category TEXT NOT NULL,
        idx INTEGER NOT NULL,
        url TEXT NOT NULL,
        relpath TEXT NOT NULL,
        PRIMARY KEY (product_id, category, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS failures (
        product_id TEXT NOT NULL,
        category TEXT NOT NULL,
        idx INTEGER NOT NULL,
        url TEXT NOT NULL,
        reason TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        PRIMARY KEY (product_id, category, idx)
    ) WITHOUT ROWID""",
)
COLUMNS = {
    "meta": {"key", "value"},
    "products": {"seq", "id", "done_seq", "record", "entry"},
    "images": {"product_id", "category", "idx", "url", "relpath"},
    "failures": {"product_id", "category", "idx", "url", "reason", "attempts"},
}

# Every statement of the store; tests/test_sqlite_store.py checks that none of
# those a record runs scans a table, which is what keeps the cost per record flat.
SQL_IS_DONE = "SELECT 1 FROM products WHERE id = ? AND done_seq IS NOT NULL"
SQL_ENTRY = "SELECT entry FROM products WHERE id = ? AND done_seq IS NOT NULL"
SQL_COMPLETED = "SELECT count(*) FROM products WHERE done_seq IS NOT NULL"
SQL_PENDING_COUNT = "SELECT count(*) FROM products WHERE done_seq IS NULL"
SQL_HAS_PENDING = "SELECT EXISTS (SELECT 1 FROM products WHERE done_seq IS NULL)"
SQL_MAPPING_PAGE = (
    "SELECT done_seq, id, entry FROM products WHERE done_seq > ?"
    " ORDER BY done_seq LIMIT ?"
)
SQL_PENDING_PAGE = (
    "SELECT seq, id, record FROM products WHERE done_seq IS NULL AND seq > ?"
    " ORDER BY seq LIMIT ?"
)
# SQL_PENDING_PAGE as one row of JSON, [[seq, id, record], ...]: the sqlite3
# module lets other threads take the GIL around every row it steps to, and
# while 16 threads download, getting it back cost ten times the query itself.
# Fails on a BLOB id or record (see SqliteStore's _bind): the caller then reads
# the rows one by one.
SQL_CLAIM = (
    "SELECT json_group_array(json_array(seq, id, record)) FROM"
    " (SELECT seq, id, record FROM products WHERE done_seq IS NULL AND seq > ?"
    " ORDER BY seq LIMIT ?)"
)
SQL_FAILURES = (
    "SELECT f.product_id, f.category, f.idx, f.url, f.reason, f.attempts"
    " FROM failures AS f LEFT JOIN products AS p ON p.id = f.product_id"
    " ORDER BY p.done_seq, f.product_id, f.category, f.idx"
)
SQL_FAILURE_COUNT = "SELECT count(*) FROM failures"
SQL_SAVED = "SELECT category, idx, url, relpath FROM images WHERE product_id = ?"
SQL_ADD_PENDING = (
    "INSERT INTO products (id, record) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
)
# A re-recorded product (--retry-failed) keeps its place in the completion order.
SQL_RECORD_PRODUCT = (
    "INSERT INTO products (id, done_seq, entry)"
    " VALUES (?, (SELECT coalesce(max(done_seq), 0) + 1 FROM products), ?)"
    " ON CONFLICT (id) DO UPDATE SET"
    " done_seq = coalesce(done_seq, excluded.done_seq),"
    " entry = excluded.entry, record = NULL"
)
SQL_DROP_IMAGES = "DELETE FROM images WHERE product_id = ?"
SQL_DROP_FAILURES = "DELETE FROM failures WHERE product_id = ?"
SQL_ADD_FAILURE = (
    "INSERT OR REPLACE INTO failures"
    " (product_id, category, idx, url, reason, attempts) VALUES (?, ?, ?, ?, ?, ?)"
)
SQL_RECORD_IMAGE = (
    "INSERT OR REPLACE INTO images (product_id, category, idx, url, relpath)"
    " VALUES (?, ?, ?, ?, ?)"
)
