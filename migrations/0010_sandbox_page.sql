-- The sandbox's hosted checkout page: what it needs beside the 0009 contract.

-- The page is reached by the session id alone (`/sandbox/checkout/{id}`), without the account.
-- Ids are made with random UUIDs, so they are unique across accounts; the index says so.
CREATE UNIQUE INDEX sandbox_checkout_sessions_id ON sandbox_checkout_sessions (id);

-- A trial takes a card without charging, so it has no payment to hold the confirmation step of
-- 4000 0025 0000 3155: the session holds it instead, until it is approved or failed.
ALTER TABLE sandbox_checkout_sessions
    ADD COLUMN setup_requires_action boolean NOT NULL DEFAULT false;
