-- Coffer's prices mirrored on providers that need their own price object (Stripe's products and
-- prices, Polar's products): made on first use through the operations journal, like customers,
-- and remembered in provider_objects under the kind 'price'.
ALTER TABLE provider_operations DROP CONSTRAINT provider_operations_kind_check;
ALTER TABLE provider_operations ADD CONSTRAINT provider_operations_kind_check
    CHECK (kind IN ('create_customer', 'create_price', 'create_checkout_session',
                    'expire_checkout_session', 'refund'));

ALTER TABLE provider_objects DROP CONSTRAINT provider_objects_kind_check;
ALTER TABLE provider_objects ADD CONSTRAINT provider_objects_kind_check
    CHECK (kind IN ('customer', 'price', 'checkout_session', 'payment', 'refund',
                    'subscription'));
