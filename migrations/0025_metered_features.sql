-- A plan's feature is a switch, or metered: usage of a meter per billing period up to a limit
-- (plus the customer's credits). The meter is named by key; it must exist when the plan is
-- made (meters are never deleted).
ALTER TABLE plan_features
    ADD COLUMN meter_key        text   CHECK (meter_key ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    ADD COLUMN limit_per_period bigint CHECK (limit_per_period BETWEEN 0 AND 1000000000000000),
    ADD CHECK ((meter_key IS NULL) = (limit_per_period IS NULL));
