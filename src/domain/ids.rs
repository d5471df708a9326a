//! TypeIDs: `prefix_` followed by the 26-character Crockford base32 form of a UUIDv7
//! (`customer_01jd9x8k3ff3d9r6h2a7q4w5tz`). Stored as `uuid`; the prefix lives only on the wire,
//! so each id type knows its own and refuses the others.

use std::fmt;

use uuid::Uuid;

use super::Invalid;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const SUFFIX_LEN: usize = 26;

/// Encodes a UUID as 26 lower-case Crockford base32 characters (the TypeID suffix).
pub fn encode_suffix(uuid: Uuid) -> String {
    let value = uuid.as_u128();
    (0..SUFFIX_LEN)
        .map(|i| {
            let shift = 5 * (SUFFIX_LEN - 1 - i);
            ALPHABET[((value >> shift) & 0x1f) as usize] as char
        })
        .collect()
}

/// Decodes a TypeID suffix. The first character carries only the top 3 bits, so it must be
/// 0-7; upper case is refused, as the TypeID spec requires.
pub fn decode_suffix(suffix: &str) -> Result<Uuid, Invalid> {
    if suffix.len() != SUFFIX_LEN {
        return Err(Invalid::new(format!(
            "id suffix must be {SUFFIX_LEN} base32 characters"
        )));
    }
    let mut value: u128 = 0;
    for (i, c) in suffix.bytes().enumerate() {
        let digit = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| Invalid::new("id suffix has a character outside lower-case base32"))?;
        if i == 0 && digit > 7 {
            return Err(Invalid::new("id suffix is out of range"));
        }
        value = (value << 5) | digit as u128;
    }
    Ok(Uuid::from_u128(value))
}

/// Defines a typed id with its TypeID prefix.
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an id read back from the database.
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// Parses `prefix_suffix`; a missing or different prefix is refused.
            pub fn parse(s: &str) -> Result<Self, Invalid> {
                let suffix = s
                    .strip_prefix(concat!($prefix, "_"))
                    .ok_or_else(|| Invalid::new(concat!("must be an id starting with \"", $prefix, "_\"")))?;
                decode_suffix(suffix).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, encode_suffix(self.0))
            }
        }
    };
}

typed_id!(
    /// A tenant: an internal product or business unit.
    TenantId,
    "tenant"
);
typed_id!(
    /// A customer of a tenant.
    CustomerId,
    "customer"
);
typed_id!(
    /// An API key; the id is public, the secret is not.
    KeyId,
    "key"
);
typed_id!(
    /// A usage meter of a tenant.
    MeterId,
    "meter"
);
typed_id!(
    /// A grant of usage credits to a customer.
    GrantId,
    "grant"
);
typed_id!(
    /// A plan of a tenant's catalogue.
    PlanId,
    "plan"
);
typed_id!(
    /// A price of a plan; immutable once made.
    PriceId,
    "price"
);
typed_id!(
    /// A provider webhook event in a tenant's inbox.
    EventId,
    "event"
);
typed_id!(
    /// A checkout session: where a customer pays, on the provider's hosted page.
    CheckoutId,
    "checkout"
);
typed_id!(
    /// A payment: one charge, of a one-time checkout or of a subscription's period.
    PaymentId,
    "payment"
);
typed_id!(
    /// A refund of (part of) a payment.
    RefundId,
    "refund"
);
typed_id!(
    /// A customer's subscription to a plan's price.
    SubscriptionId,
    "subscription"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_order() {
        let a = CustomerId::generate();
        let b = CustomerId::generate();
        let s = a.to_string();
        assert!(s.starts_with("customer_"));
        assert_eq!(s.len(), "customer_".len() + 26);
        assert_eq!(CustomerId::parse(&s).unwrap(), a);
        // UUIDv7 ids sort by creation time, and so do their encodings.
        assert!(a.to_string() < b.to_string() || a.as_uuid() == b.as_uuid());
    }

    #[test]
    fn matches_the_typeid_spec_vectors() {
        // From the TypeID specification's valid.yml.
        let uuid = Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8057").unwrap();
        assert_eq!(encode_suffix(uuid), "01h455vb4pex5vsknk084sn02q");
        assert_eq!(encode_suffix(Uuid::max()), "7zzzzzzzzzzzzzzzzzzzzzzzzz");
        assert_eq!(
            decode_suffix("00000000000000000000000000").unwrap(),
            Uuid::nil()
        );
    }

    #[test]
    fn refuses_malformed_ids() {
        let good = CustomerId::generate().to_string();
        assert!(KeyId::parse(&good).is_err(), "wrong prefix");
        assert!(CustomerId::parse(&good.to_uppercase()).is_err());
        assert!(CustomerId::parse("customer_8zzzzzzzzzzzzzzzzzzzzzzzzz").is_err());
        assert!(CustomerId::parse("customer_0123").is_err());
        assert!(CustomerId::parse("customer_0000000000000000000000000u").is_err());
        assert!(CustomerId::parse("").is_err());
    }
}
