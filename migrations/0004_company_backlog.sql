-- A company's open jobs, read on every submission to hold the company to
-- SYNC_MAX_COMPANY_BACKLOG: a small partial index (only queued and
-- processing jobs), covering the item counts.
CREATE INDEX sync_jobs_open_by_company_idx ON sync_jobs (company_guid)
    INCLUDE (item_count)
    WHERE status IN ('queued', 'processing');
