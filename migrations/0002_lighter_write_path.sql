-- Every CreateCustomer writes a customer, an audit row and an idempotency outcome in one
-- statement, so every index, foreign key and trigger on those tables is paid on every call.
-- Measured with pgbench on that statement (see ARCHITECTURE.md, "Performance"):
--
-- - Foreign keys to tenants run one RI trigger query per inserted row (three per call) and
--   cost 15-20% of the write path. They guard nothing here: every tenant_id written comes from
--   an authenticated API key, whose row keeps its foreign key to tenants, and tenants are never
--   deleted. api_keys keeps its foreign key; it is written rarely.
-- - audit_log_object serves no query yet (nothing reads the audit log by object); it comes back
--   with the first reader.
-- - The sweeper's range scan on idempotency_keys.created_at needs no B-tree: rows arrive in
--   created_at order, so a BRIN index finds old pages at a fraction of the upkeep.
ALTER TABLE customers DROP CONSTRAINT customers_tenant_id_fkey;
ALTER TABLE audit_log DROP CONSTRAINT audit_log_tenant_id_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_tenant_id_fkey;
DROP INDEX audit_log_object;
DROP INDEX idempotency_keys_created;
CREATE INDEX idempotency_keys_created ON idempotency_keys USING brin (created_at);
