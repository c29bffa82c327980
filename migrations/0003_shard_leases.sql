-- Workers share the shards (SPEC §6): who is alive, and who holds which
-- shard. Decided here, in the system of record, so that every batch
-- transaction can check its worker's lease (fencing).

-- One row per live worker process; a row whose `expires_at` has passed is a
-- dead worker, removed by the next worker that looks.
CREATE TABLE sync_workers (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    joined_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

-- One row per shard. `owner` NULL: free. `epoch` grows by one with every
-- claim, so a worker that lost the shard cannot pass for its new owner.
CREATE TABLE sync_shard_leases (
    shard      integer PRIMARY KEY CHECK (shard >= 0),
    owner      uuid,
    epoch      bigint NOT NULL DEFAULT 0,
    claimed_at timestamptz,
    expires_at timestamptz
);
CREATE INDEX sync_shard_leases_owner_idx ON sync_shard_leases (owner);
