-- Feedback on answers: a thumbs up or down from the web page or any API client, with the
-- question, the answer, its citations and trace as they were shown, an optional reason,
-- comment and correct answer. `verity feedback export` turns it into a `verity eval qa`
-- dataset, so the answers people marked wrong become a regression set.
CREATE TABLE feedback (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant         text NOT NULL,
    collection     text NOT NULL,
    rating         text NOT NULL CHECK (rating IN ('up', 'down')),
    reason         text,
    comment        text NOT NULL DEFAULT '',
    correct_answer text NOT NULL DEFAULT '',
    question       text NOT NULL,
    answer         text NOT NULL,
    answer_status  text NOT NULL DEFAULT 'answered',
    citations      jsonb NOT NULL DEFAULT '[]'::jsonb,
    trace          jsonb NOT NULL DEFAULT '{}'::jsonb,
    key_id         bigint,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX feedback_tenant_created_idx ON feedback (tenant, created_at DESC);
