-- Where a blob's bytes are when not at the blob store's content-addressed place for its
-- digest (an object key); NULL means content-addressed.
ALTER TABLE blobs ADD COLUMN location TEXT;
