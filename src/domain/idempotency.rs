//! Idempotency keys as callers send them in the `idempotency-key` metadata.

use super::validation::{Invalid, is_printable_ascii, untrimmed};

/// 1-255 printable ASCII characters with no space at either end, unique per (tenant, method) for
/// 24 hours. A proxy that trims header values would otherwise make a retry of `" k"` a new
/// request under `"k"`, so such keys are refused rather than trimmed or kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 255 || !is_printable_ascii(s) {
            return Err(Invalid::new("must be 1 to 255 printable ASCII characters"));
        }
        untrimmed(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_without_outer_spaces() {
        for ok in ["k", "order 42", &"k".repeat(255)] {
            assert!(IdempotencyKey::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", " k", "k ", "\tk", "k\u{0}", "ké", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
