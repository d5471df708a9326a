-- Retention (DESIGN §5.4): a settled event's raw body, which may carry personal data (a
-- customer's name, email, address), is removed once it is older than the retention period
-- (`--webhook-payload-retention`, default 90 days). The row stays, so the inbox still answers
-- ListEvents and de-duplicates redeliveries; only its payload goes, and it cannot be replayed.
ALTER TABLE webhook_events
    ADD COLUMN payload_purged_at timestamptz,
    ADD CONSTRAINT webhook_events_purged_payload_is_empty
        CHECK (payload_purged_at IS NULL
               OR (octet_length(payload) = 0 AND status IN ('processed', 'ignored', 'dead')));
-- What the sweeper purges next, oldest first. Partial: a pending event has no entry (the
-- ingestion path pays nothing), a settled one gains its entry with the settling update (which
-- rewrites every index anyway, status being indexed), and a purged one leaves it.
CREATE INDEX webhook_events_to_purge ON webhook_events (received_at)
    WHERE payload_purged_at IS NULL AND status IN ('processed', 'ignored', 'dead');
