-- When a new claim may take an idempotency key that is already stored: the attempt holding its
-- claim is gone (its lease lapsed), or its outcome is past retention. Every claiming statement
-- (the claim-first claim and the one-statement creates of customers, meters and credit grants)
-- applies this rule in its `ON CONFLICT ... DO UPDATE ... WHERE`; it was written out in each.
-- A single SQL expression, STABLE (it reads now()) and not STRICT, so the planner inlines it
-- into each statement: the hot create path pays no function call. `retention_secs` is Coffer's
-- RETENTION_SECS, which the sweeper's deletion of old keys uses too.
CREATE FUNCTION idempotency_key_open(state text, locked_until timestamptz,
                                     created_at timestamptz, retention_secs float8)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (state = 'in_flight' AND locked_until < now())
        OR created_at < now() - make_interval(secs => retention_secs)
$$;
