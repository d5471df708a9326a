-- Foundation: tenants, API keys, customers, idempotency keys and the audit log.
-- Every tenant-owned table leads its keys and indexes with tenant_id (see ARCHITECTURE.md).

CREATE TABLE tenants (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A key is "ck_<id>_<secret>"; only the SHA-256 of the whole key string is stored.
-- System keys (tenant_id IS NULL) belong to no tenant and may hold only events:ingest.
CREATE TABLE api_keys (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        REFERENCES tenants (id),
    scopes      text[]      NOT NULL,
    key_hash    bytea       NOT NULL CHECK (octet_length(key_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (scopes <@ ARRAY['read', 'write', 'admin', 'events:ingest']),
    CHECK ((tenant_id IS NULL) = (scopes = ARRAY['events:ingest']))
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);

CREATE TABLE customers (
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    id          uuid        NOT NULL,
    external_id text        CHECK (external_id IS NULL OR octet_length(external_id) BETWEEN 1 AND 255),
    email       text        CHECK (email IS NULL OR char_length(email) <= 254),
    name        text        CHECK (name IS NULL OR char_length(name) <= 256),
    metadata    jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz,
    PRIMARY KEY (tenant_id, id)
);
-- external_id is unique among live customers only: a soft delete frees it.
CREATE UNIQUE INDEX customers_external_id_live
    ON customers (tenant_id, external_id) WHERE deleted_at IS NULL AND external_id IS NOT NULL;
CREATE INDEX customers_email_live
    ON customers (tenant_id, lower(email), id) WHERE deleted_at IS NULL;

-- One row per (tenant, method, key). An 'in_flight' row is a claim with a lease; a
-- 'completed' row holds the outcome: the encoded response, or the caller's error.
CREATE TABLE idempotency_keys (
    tenant_id     uuid        NOT NULL REFERENCES tenants (id),
    method        text        NOT NULL,
    key           text        NOT NULL,
    fingerprint   bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    state         text        NOT NULL CHECK (state IN ('in_flight', 'completed')),
    lease_id      uuid        NOT NULL,
    locked_until  timestamptz NOT NULL,
    response      bytea,
    error_kind    text,
    error_reason  text,
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, method, key),
    CHECK (state = 'in_flight' OR (response IS NULL) <> (error_kind IS NULL))
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Who changed what, written in the same transaction as the change.
CREATE TABLE audit_log (
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    key_id      uuid,
    action      text        NOT NULL,
    object_type text        NOT NULL,
    object_id   uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX audit_log_object ON audit_log (tenant_id, object_type, object_id);
