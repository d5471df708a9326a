-- Usage meters: a tenant's named quantities and how their events add up.
CREATE TABLE meters (
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    id          uuid        NOT NULL,
    key         text        NOT NULL CHECK (key ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    name        text        CHECK (name IS NULL OR char_length(name) <= 256),
    aggregation text        NOT NULL
        CHECK (aggregation IN ('count', 'sum', 'max', 'unique_count', 'latest')),
    value_key   text        CHECK (value_key IS NULL OR value_key ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, key),
    -- COUNT needs no value; every other aggregation reads one.
    CHECK ((aggregation = 'count') = (value_key IS NULL))
);
