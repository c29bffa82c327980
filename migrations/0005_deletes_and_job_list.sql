-- Deletes, cancelling queued jobs and the job list (SPEC §4 "Deleting",
-- §5 "Listing and cancelling jobs").

-- What a job does: upsert its items, or delete them.
ALTER TABLE sync_jobs
    ADD COLUMN operation text NOT NULL DEFAULT 'upsert'
        CHECK (operation IN ('upsert', 'delete')),
    ADD COLUMN deleted   integer,
    ADD COLUMN not_found integer;

-- A queued job may end cancelled.
ALTER TABLE sync_jobs DROP CONSTRAINT sync_jobs_status_check;
ALTER TABLE sync_jobs ADD CONSTRAINT sync_jobs_status_check
    CHECK (status IN ('queued', 'processing', 'succeeded', 'failed', 'cancelled'));

-- The job list: a company's jobs newest first, paged by the key
-- (submitted_at, correlation_id). Jobs recorded together share their
-- submitted_at, so the id must be in the key, and in the index that
-- replaces the one on (company_guid, submitted_at). Not CONCURRENTLY: every
-- process migrates at start-up, and a concurrent build waits for the other
-- migrators, which wait on the migration lock it holds.
CREATE INDEX sync_jobs_company_list_idx
    ON sync_jobs (company_guid, submitted_at, correlation_id);
DROP INDEX sync_jobs_company_submitted_idx;

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
