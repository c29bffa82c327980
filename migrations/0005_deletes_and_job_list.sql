-- Deletes, cancelling queued jobs and the job list (SPEC §4 "Deleting",
-- §5 "Listing and cancelling jobs").

-- What a job does: upsert its items, or delete them.
ALTER TABLE sync_jobs
    ADD COLUMN operation text NOT NULL DEFAULT 'upsert'
        CHECK (operation IN ('upsert', 'delete')),
    ADD COLUMN deleted   integer,
    ADD COLUMN not_found integer;

-- A queued job may end cancelled. Added NOT VALID and validated apart, so
-- that the scan of existing rows does not hold the table's exclusive lock.
ALTER TABLE sync_jobs DROP CONSTRAINT sync_jobs_status_check;
ALTER TABLE sync_jobs ADD CONSTRAINT sync_jobs_status_check
    CHECK (status IN ('queued', 'processing', 'succeeded', 'failed', 'cancelled')) NOT VALID;
ALTER TABLE sync_jobs VALIDATE CONSTRAINT sync_jobs_status_check;

-- Tombstones: one row per entity row a delete job removed, so that systems
-- reading the database can follow deletions (in `id` order). Purged after
-- SYNC_TOMBSTONE_RETENTION_DAYS.
CREATE TABLE sync_deletions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity         text NOT NULL
                   CHECK (entity IN ('projects', 'components', 'assemblies', 'pieces', 'articles')),
    guid           uuid NOT NULL,
    company_guid   uuid NOT NULL,
    correlation_id uuid NOT NULL,
    deleted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_deletions_company_idx ON sync_deletions (company_guid, entity, guid);
CREATE INDEX sync_deletions_deleted_at_idx ON sync_deletions (deleted_at);
