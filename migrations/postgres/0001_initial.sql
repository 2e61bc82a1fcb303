-- Berth metadata, PostgreSQL dialect. Keep in step with migrations/sqlite: the statements in
-- service/src/metadata/sql.rs run unchanged on both. Names and digests sort by bytes
-- (COLLATE "C"), as the tag and catalog listings must.

CREATE TABLE repositories (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- One row per stored blob, whatever the number of repositories that link it.
CREATE TABLE blobs (
    digest TEXT COLLATE "C" PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- A blob is visible in a repository only while linked to it.
CREATE TABLE repository_blobs (
    repository_id BIGINT NOT NULL REFERENCES repositories (id),
    digest TEXT COLLATE "C" NOT NULL REFERENCES blobs (digest),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);

CREATE TABLE manifests (
    repository_id BIGINT NOT NULL REFERENCES repositories (id),
    digest TEXT COLLATE "C" NOT NULL,
    media_type TEXT NOT NULL,
    -- artifactType, or the config media type of an image manifest: what the referrers API reports.
    artifact_type TEXT,
    subject TEXT COLLATE "C",
    -- the manifest's annotations as a JSON object, for the referrers API
    annotations TEXT,
    size BIGINT NOT NULL,
    payload BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);

CREATE INDEX manifests_by_subject ON manifests (repository_id, subject) WHERE subject IS NOT NULL;

-- What each manifest points at (its config and layers, or its child manifests).
CREATE TABLE manifest_references (
    repository_id BIGINT NOT NULL,
    manifest_digest TEXT COLLATE "C" NOT NULL,
    target_digest TEXT COLLATE "C" NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, target_digest),
    FOREIGN KEY (repository_id, manifest_digest) REFERENCES manifests (repository_id, digest)
);

CREATE INDEX manifest_references_by_target ON manifest_references (repository_id, target_digest);

CREATE TABLE tags (
    repository_id BIGINT NOT NULL REFERENCES repositories (id),
    name TEXT COLLATE "C" NOT NULL,
    manifest_digest TEXT COLLATE "C" NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, manifest_digest) REFERENCES manifests (repository_id, digest)
);
