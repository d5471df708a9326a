//! AIP-158 pages, the same for every list: where a page starts, and the page a query's
//! `size + 1` rows make.

use uuid::Uuid;

use super::AppError;
use crate::domain::Violations;
use crate::domain::page::{FilterDigest, PageSize, PageToken};

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

/// The id a page starts after: `None` for the first page, else the token's, which must have
/// been made by the same list with the same filters (`INVALID_ARGUMENT` on `page_token`).
pub fn start(token: Option<&str>, filters: FilterDigest) -> Result<Option<Uuid>, AppError> {
    match token {
        None | Some("") => Ok(None),
        Some(token) => PageToken::decode(token, filters)
            .map(|t| Some(t.after))
            .map_err(|e| Violations::single("page_token", e.0).into()),
    }
}

impl<T> Page<T> {
    /// The page from `rows`, fetched with a limit of `size + 1`: the extra row only tells that
    /// another page follows.
    pub fn of(mut rows: Vec<T>, size: PageSize, filters: FilterDigest, id: fn(&T) -> Uuid) -> Self {
        let size = size.get();
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| PageToken::new(id(last), filters).encode())
        } else {
            None
        };
        Page {
            items: rows,
            next_page_token,
        }
    }
}
