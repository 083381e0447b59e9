-- The documents a caller's groups allow, found through an index: a search whose filter
-- leaves few chunks visible (binary-rescore's exact path) starts from them, so its cost
-- follows the visible documents rather than the collection. The filter's
-- "acl_groups = '{}' OR acl_groups && groups" is answered by this index alone.
CREATE INDEX IF NOT EXISTS documents_acl_groups_idx ON documents USING gin (acl_groups);
