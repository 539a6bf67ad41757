-- idemq record table, format 1.
--
-- Apply with `PostgresStore::migrate()`, or run this file yourself (it is idempotent). To use another
-- table name, replace `idemq_records` everywhere below (the index name starts with the table name;
-- with a schema-qualified table, keep the index name unqualified: it is created in the table's
-- schema) and pass the same name to `PostgresOptions::table`.

CREATE TABLE IF NOT EXISTS idemq_records (
    -- Namespace (consumer group / queue) and idempotency key. "C" collation: byte order, so scan
    -- pages are ordered like Rust strings and comparisons do not depend on the server locale.
    scope           text COLLATE "C" NOT NULL,
    idempotency_key text COLLATE "C" NOT NULL,
    -- Fencing token: grows with every successful claim, kept by release tombstones.
    token           bigint NOT NULL,
    -- SHA-256 of the message that claimed the key (32 bytes).
    fingerprint     bytea NOT NULL,
    attempt         integer NOT NULL,
    -- 'in_progress' | 'released' | 'completed'. Plain text rather than an enum type or a CHECK
    -- constraint, so a row written by another format version reads as a typed "corrupt record"
    -- error naming the key instead of failing the whole statement.
    state           text NOT NULL,
    lease_until     timestamptz,
    -- 'succeeded' | 'failed', and the serialized outcome; set once completed.
    outcome_status  text,
    outcome         bytea,
    completed_at    timestamptz,
    -- Rows past this instant read as absent; purge_expired() deletes them.
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (scope, idempotency_key)
);

-- Makes purge_expired() (DELETE ... WHERE expires_at <= now()) an index range scan.
CREATE INDEX IF NOT EXISTS idemq_records_expires_at_idx ON idemq_records (expires_at);

COMMENT ON TABLE idemq_records IS 'idemq idempotency records, format 1';
