//! Field-level validation results, gathered so a caller learns about every bad field at once,
//! and the character rules every text field of every service shares (`visible`, `untrimmed`).

use std::fmt;

/// Why one value was refused; the message is lower case and names no field (the caller's
/// field name is attached where the value was read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One refused field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Collects field violations while a request is parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `result`'s error under `field` and passes the value on.
    pub fn check<T>(&mut self, field: &str, result: Result<T, Invalid>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(invalid) => {
                self.add(field, invalid.0);
                None
            }
        }
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.to_owned(),
            description: description.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn list(&self) -> &[FieldViolation] {
        &self.0
    }

    /// `Ok(())` when nothing was recorded, so parsing code can end with `violations.finish()?`.
    pub fn finish(self) -> Result<(), Violations> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// A single violation, for requests that fail on one field.
    pub fn single(field: &str, description: impl Into<String>) -> Self {
        let mut v = Self::new();
        v.add(field, description);
        v
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

/// True for printable ASCII (space to tilde), the alphabet of external ids and idempotency keys.
pub fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Refuses a leading or trailing space. Proxies, forms and shells trim values, so a key that
/// differs from another only by its outer spaces would turn a retry into a different request.
pub fn untrimmed(s: &str) -> Result<(), Invalid> {
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err(Invalid::new("must not start or end with a space"));
    }
    Ok(())
}

/// What a text field is for, which decides the invisible characters it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Compared, looked up or shown as who someone is (emails, metadata keys): no invisible
    /// character at all, so two values that look alike are alike.
    Identifier,
    /// Read by people (names, metadata values): the same, except the zero-width non-joiner and
    /// joiner (U+200C, U+200D), which Persian, the Indic scripts and emoji sequences need.
    Prose,
}

/// Refuses the characters that are invisible or rearrange what is shown: control characters
/// (Unicode Cc, NUL included, which Postgres cannot store in text or jsonb), format characters
/// (Cf: zero-width spaces, bidi overrides and isolates, the byte order mark, tag characters)
/// and the line and paragraph separators. They let `a@b.c\u{200b}` pass for `a@b.c` and
/// `\u{202e}` reverse what a reader sees. The message names the code point, never the value.
pub fn visible(s: &str, kind: TextKind) -> Result<(), Invalid> {
    match s.chars().find(|&c| is_invisible(c, kind)) {
        None => Ok(()),
        Some(c) => Err(Invalid::new(format!(
            "must not contain control or invisible formatting characters (found U+{:04X})",
            u32::from(c)
        ))),
    }
}

fn is_invisible(c: char, kind: TextKind) -> bool {
    if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
        return true;
    }
    if kind == TextKind::Prose && matches!(c, '\u{200c}' | '\u{200d}') {
        return false;
    }
    FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Unicode general category Cf (format characters), Unicode 16.0. `char::is_control` covers Cc;
/// the standard library has no test for Cf.
const FORMAT: &[(char, char)] = &[
    ('\u{ad}', '\u{ad}'),
    ('\u{600}', '\u{605}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{6dd}', '\u{6dd}'),
    ('\u{70f}', '\u{70f}'),
    ('\u{890}', '\u{891}'),
    ('\u{8e2}', '\u{8e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_format_characters_are_refused_everywhere() {
        for bad in [
            "v\u{0}",
            "tab\there",
            "line\nbreak",
            "del\u{7f}",
            "next\u{85}line",
            "a@b.c\u{200b}",
            "\u{202e}evil@x.com",
            "\u{2066}isolate\u{2069}",
            "word\u{2060}joiner",
            "\u{feff}bom",
            "soft\u{ad}hyphen",
            "tag\u{e0041}",
            "line\u{2028}separator",
            "\u{200e}mark",
        ] {
            for kind in [TextKind::Identifier, TextKind::Prose] {
                assert!(visible(bad, kind).is_err(), "{bad:?} as {kind:?}");
            }
        }
    }

    #[test]
    fn joiners_are_prose_only() {
        // "Mehrnoosh" in Persian with a zero-width non-joiner, and a family emoji (ZWJ sequence).
        for prose in [
            "مهر\u{200c}نوش",
            "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}",
        ] {
            assert!(visible(prose, TextKind::Prose).is_ok(), "{prose:?}");
            assert!(visible(prose, TextKind::Identifier).is_err(), "{prose:?}");
        }
    }

    #[test]
    fn visible_text_passes() {
        for ok in [
            "",
            "Ada Lovelace",
            "Zoë",
            "東京",
            "שלום",
            "a@b.co",
            "\u{1f600}",
            "x\u{fe0f}",
        ] {
            assert!(visible(ok, TextKind::Identifier).is_ok(), "{ok:?}");
            assert!(visible(ok, TextKind::Prose).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn the_message_names_the_code_point_not_the_value() {
        let err = visible("secret\u{0}", TextKind::Prose).unwrap_err();
        assert_eq!(
            err.0,
            "must not contain control or invisible formatting characters (found U+0000)"
        );
    }

    #[test]
    fn outer_spaces_are_refused() {
        assert!(untrimmed("k").is_ok());
        assert!(untrimmed("a b").is_ok());
        for bad in [" k", "k ", " k "] {
            assert!(untrimmed(bad).is_err(), "{bad:?}");
        }
    }
}
