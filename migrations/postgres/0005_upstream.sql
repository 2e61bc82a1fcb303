-- Pull-through caching: when a cached tag was last checked against its upstream registry
-- (revalidated after the upstream's ttl). Empty for tags pushed here.
-- Keep in step with migrations/sqlite.
ALTER TABLE tags ADD COLUMN checked_at BIGINT;
