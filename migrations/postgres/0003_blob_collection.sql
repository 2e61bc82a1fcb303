-- Garbage collection of blobs (`berth gc`). A blob being removed keeps its row, marked with
-- the time its removal began, until its bytes are gone: while the mark is there no upload
-- commits the same digest and nothing links it, and a removal cut short is found again.
ALTER TABLE blobs ADD COLUMN deleting BIGINT;

-- "Does anything still point at this blob?", asked across repositories.
CREATE INDEX repository_blobs_by_digest ON repository_blobs (digest);
CREATE INDEX manifest_references_by_target_digest ON manifest_references (target_digest);
