//! The schema agrees with the code's closed sets of values.

use coffer::app::journal::OpKind;

use crate::helpers::TestApp;

/// Every kind of journaled operation is one the table's check constraint takes. Two
/// migrations once each redefined the check with their own additions, and the later dropped
/// the earlier's kinds: every mirrored meter was then INTERNAL.
#[tokio::test]
async fn the_journal_takes_every_operation_kind() {
    let app = TestApp::spawn().await;
    let check: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint
         WHERE conname = 'provider_operations_kind_check'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    for kind in OpKind::ALL {
        assert!(
            check.contains(&format!("'{}'", kind.as_str())),
            "{} is not in {check}",
            kind.as_str()
        );
    }
}
