-- The journal's operation kinds, all of them: 0017 (usage push) and 0020 (subscription
-- changes) each redefined this check with its own additions, and the later one dropped the
-- earlier one's kinds.
ALTER TABLE provider_operations DROP CONSTRAINT provider_operations_kind_check;
ALTER TABLE provider_operations ADD CONSTRAINT provider_operations_kind_check
    CHECK (kind IN ('create_customer', 'create_price', 'create_meter', 'push_usage',
                    'create_checkout_session', 'expire_checkout_session', 'refund',
                    'update_subscription'));
