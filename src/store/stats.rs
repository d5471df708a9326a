//! Planner statistics for Coffer's own tables, kept without autovacuum.
//!
//! The pool asks for generic plans, made once per connection and kept. A plan made while a
//! table had no statistics (a fresh database, or a Postgres running without autovacuum) is made
//! for an empty table and stays so as the table grows: a sequential scan where an index scan
//! was wanted. `ANALYZE` replaces the statistics and makes every connection plan again.

use sqlx::PgConnection;

use super::StoreError;

/// The tables of Coffer's schema that changed by more than their size (plus 50 rows) since
/// they were last analysed: a fresh table soon after its first rows, a grown one each time it
/// doubles, so a table is analysed a few dozen times in its life, not once a minute. Reads
/// the counters Postgres keeps anyway (`pg_stat_user_tables`), so it is cheap to ask often.
pub async fn tables_to_analyze(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
    let tables = sqlx::query_scalar::<_, String>(
        "SELECT s.relname::text FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
         WHERE s.schemaname = current_schema() AND s.relname <> '_sqlx_migrations'
           AND s.n_mod_since_analyze > 50 + greatest(c.reltuples, 0)
         ORDER BY s.n_mod_since_analyze DESC",
    )
    .fetch_all(conn)
    .await?;
    Ok(tables)
}

/// Analyses `table`, a name [`tables_to_analyze`] returned.
pub async fn analyze(conn: &mut PgConnection, table: &str) -> Result<(), StoreError> {
    // A catalog name, quoted as an identifier: nothing a caller sends reaches it.
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {quoted}")))
        .execute(conn)
        .await?;
    Ok(())
}
