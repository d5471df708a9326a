//! The Usage service's use cases. This version: meters.

use sqlx::PgPool;

use super::idempotency::{Done, IdempotentCall, Mutations};
use super::page::{self, Page};
use super::{AppError, RejectionKind, TenantCtx};
use crate::domain::ids::MeterId;
use crate::domain::meter::{Meter, MeterRef, NewMeter};
use crate::domain::page::{FilterDigest, PageSize};
use crate::store::meters as store;

pub const REASON_METER_NOT_FOUND: &str = "METER_NOT_FOUND";
pub const REASON_METER_KEY_TAKEN: &str = "METER_KEY_TAKEN";

/// The list a page token of ListMeters belongs to.
const LIST: &str = "coffer.v1.Usage/ListMeters";

/// The Usage service's use cases.
#[derive(Clone)]
pub struct Usage {
    pool: PgPool,
    mutations: Mutations,
}

impl Usage {
    pub fn new(pool: PgPool, mutations: Mutations) -> Self {
        Self { pool, mutations }
    }

    /// Creates a meter. A key the tenant already uses is the statement finding the conflict,
    /// not a failed insert; the refusal is stored under the idempotency key like any outcome.
    pub async fn create_meter(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        new: NewMeter,
    ) -> Result<Done<Meter>, AppError> {
        let tenant = ctx.tenant;
        let meter = Meter {
            id: MeterId::generate(),
            key: new.key,
            name: new.name,
            reading: new.reading,
            created_at: super::customers::now_micros(),
        };
        self.mutations
            .run(ctx, call, move |conn| {
                Box::pin(async move {
                    if store::insert_meter(conn, tenant, &meter).await? {
                        Ok(meter)
                    } else {
                        Err(AppError::rejected(
                            RejectionKind::AlreadyExists,
                            REASON_METER_KEY_TAKEN,
                            "the tenant already has a meter with this key",
                        ))
                    }
                })
            })
            .await
    }

    pub async fn get_meter(&self, ctx: &TenantCtx, by: &MeterRef) -> Result<Meter, AppError> {
        let mut conn = self.pool.acquire().await?;
        let found = match by {
            MeterRef::Id(id) => store::find_meter_by_id(&mut conn, ctx.tenant, *id).await?,
            MeterRef::Key(key) => store::find_meter_by_key(&mut conn, ctx.tenant, key).await?,
        };
        found.ok_or_else(|| AppError::not_found(REASON_METER_NOT_FOUND, "meter not found"))
    }

    pub async fn list_meters(
        &self,
        ctx: &TenantCtx,
        size: PageSize,
        token: Option<&str>,
    ) -> Result<Page<Meter>, AppError> {
        let filters = FilterDigest::of(LIST, &[]);
        let after = page::start(token, filters)?.unwrap_or(uuid::Uuid::nil());
        let mut conn = self.pool.acquire().await?;
        let rows = store::list_meters(&mut conn, ctx.tenant, after, size.get() as i64 + 1).await?;
        Ok(Page::of(rows, size, filters, |m| m.id.as_uuid()))
    }
}
