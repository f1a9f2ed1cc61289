-- PostgreSQL form of ../0012_accounts.sql.
-- Listener accounts (argon2id password hashes), OAuth clients (secret hashes for services;
-- first-party apps have none) and refresh tokens (hashes; each used once).
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE oauth_clients (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('first_party', 'service')),
    secret_sha256 TEXT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE refresh_tokens (
    id            TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users (id),
    client_id     TEXT NOT NULL REFERENCES oauth_clients (id),
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    created_at    BIGINT NOT NULL
);

CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);
