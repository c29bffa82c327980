-- no-transaction
-- Replaced by sync_jobs_company_list_idx (0006), which leads with the same
-- columns.
DROP INDEX CONCURRENTLY IF EXISTS sync_jobs_company_submitted_idx;
