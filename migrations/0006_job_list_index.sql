-- no-transaction
-- The job list (SPEC §5): a company's jobs newest first, paged by the key
-- (submitted_at, correlation_id). Jobs recorded together share their
-- submitted_at, so the id is part of the key. Built CONCURRENTLY, so that
-- intake goes on while it builds (one statement: a migration without a
-- transaction runs its text as one implicit transaction block).
CREATE INDEX CONCURRENTLY IF NOT EXISTS sync_jobs_company_list_idx
    ON sync_jobs (company_guid, submitted_at, correlation_id);
