-- Ingestion jobs. The service enqueues uploads here; workers (a thread of `verity serve`
-- or `verity worker` processes) claim them with FOR UPDATE SKIP LOCKED, so any number of
-- workers share one queue without claiming a job twice.
--
-- Uploaded bytes live in job_files, in the same database, rather than on a local disk:
-- the service and a standalone worker then share nothing but the database (no shared
-- volume in Kubernetes), a job and its files are enqueued in one transaction, and they
-- are deleted together (the bytes as soon as the job ends), so nothing is orphaned.
CREATE TABLE jobs (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant         text NOT NULL,
    collection     text NOT NULL,
    status         text NOT NULL DEFAULT 'queued'
                   CHECK (status IN ('queued', 'running', 'done', 'failed')),
    acl_groups     text[] NOT NULL DEFAULT '{}',
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    files_total    integer NOT NULL DEFAULT 0,
    files_done     integer NOT NULL DEFAULT 0,
    chunks_written integer NOT NULL DEFAULT 0,
    failures       jsonb NOT NULL DEFAULT '[]'::jsonb,
    error          text,
    attempt        integer NOT NULL DEFAULT 0,
    worker         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);

CREATE INDEX jobs_queued_idx ON jobs (created_at) WHERE status = 'queued';
CREATE INDEX jobs_running_idx ON jobs (updated_at) WHERE status = 'running';

CREATE TABLE job_files (
    job_id   uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ordinal  integer NOT NULL,
    filename text NOT NULL,
    content  bytea NOT NULL,
    PRIMARY KEY (job_id, ordinal)
);
