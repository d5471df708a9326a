-- The card a customer saves in the sandbox portal is the customer's card on file even when no
-- subscription of theirs is live to carry it: whether it is the 0341 card (declines when
-- charged later) is kept beside its brand and last four, so CreateSubscription charges it.
ALTER TABLE sandbox_customers ADD COLUMN card_fails_on_renewal boolean;
