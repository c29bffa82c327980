-- Idempotency keys (SPEC §4): one per company and key, kept 24 h.
CREATE TABLE idempotency_keys (
    company_guid   uuid NOT NULL,
    key            text NOT NULL,
    request_hash   bytea NOT NULL,
    correlation_id uuid NOT NULL,
    guids          uuid[] NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_guid, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Queue position of a waiting job: the open jobs ahead of it in its shard.
CREATE INDEX sync_jobs_open_by_shard_idx ON sync_jobs (shard, submitted_at)
    WHERE status IN ('queued', 'processing');
