//! Idempotency keys as callers send them in the `idempotency-key` metadata.

use super::validation::{Invalid, is_printable_ascii};

/// 1-255 printable ASCII characters, unique per (tenant, method) for 24 hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 255 || !is_printable_ascii(s) {
            return Err(Invalid::new("must be 1 to 255 printable ASCII characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
