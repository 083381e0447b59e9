-- What the web page's document library needs of a job: the names of its files, kept after
-- the bytes are dropped so per-file status can still be shown, and a 'cancelled' status for
-- a job a person stopped. A cancelled job's worker notices at its next progress report
-- (the report names a running job, which this one no longer is) and stops.
ALTER TABLE jobs ADD COLUMN filenames text[] NOT NULL DEFAULT '{}';
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled'));
CREATE INDEX jobs_tenant_created_idx ON jobs (tenant, created_at DESC);
