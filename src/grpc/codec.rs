//! The protobuf codec of every Coffer service: prost's, except that a request that does not
//! decode is the caller's mistake, INVALID_ARGUMENT with a `BadRequest`, not the INTERNAL that
//! `tonic_prost::ProstCodec` answers. `build.rs` names it as the codec of the generated code.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use super::status;
use crate::domain::Violations;

/// Encodes with prost as `ProstCodec` does; decodes with [`CofferDecoder`].
#[derive(Debug, Clone)]
pub struct CofferCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for CofferCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for CofferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CofferDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CofferDecoder { _pd: PhantomData }
    }
}

/// Decodes a `U` with prost and answers a malformed message with [`undecodable`].
///
/// The generated clients in this crate (the tests', `coffer bench`'s) share this codec, so for
/// them an undecodable response is INVALID_ARGUMENT too; they only ever talk to Coffer.
#[derive(Debug, Clone)]
pub struct CofferDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for CofferDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| undecodable(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// INVALID_ARGUMENT naming the field prost failed on (`email`, `customer.email`), or `request`
/// when it could not tell (a truncated message, a bad tag).
pub fn undecodable(error: &prost::DecodeError) -> Status {
    let (field, description) = describe(error);
    status::invalid(&Violations::single(&field, description))
}

/// Where and why prost failed, read from its message, the only place it says:
/// `failed to decode Protobuf message: Customer.email: UpdateCustomerRequest.customer: invalid
/// string value: data is not UTF-8 encoded`. Its (message, field) pairs run from the innermost
/// out; the field path runs the other way.
fn describe(error: &prost::DecodeError) -> (String, String) {
    let text = error.to_string();
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut path = Vec::new();
    while let Some((segment, tail)) = rest.split_once(": ") {
        let Some((message, field)) = segment.split_once('.') else {
            break;
        };
        if !is_identifier(message) || !is_identifier(field) {
            break;
        }
        path.push(field);
        rest = tail;
    }
    path.reverse();
    let field = if path.is_empty() {
        "request".to_owned()
    } else {
        path.join(".")
    };
    let description = if rest.starts_with("invalid string value") {
        "must be valid UTF-8".to_owned()
    } else {
        format!("is not a valid protobuf message: {rest}")
    };
    (field, description)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::pb;

    /// `message` encoded, with its first 0x7f byte (a placeholder in a string) made 0xff.
    fn corrupt<M: Message>(message: &M) -> Vec<u8> {
        let mut bytes = message.encode_to_vec();
        let at = bytes.iter().position(|&b| b == 0x7f).expect("placeholder");
        bytes[at] = 0xff;
        bytes
    }

    #[test]
    fn names_the_field_that_is_not_utf8() {
        let top = corrupt(&pb::CreateCustomerRequest {
            email: "a\u{7f}@b.co".into(),
            ..Default::default()
        });
        let err = pb::CreateCustomerRequest::decode(&top[..]).unwrap_err();
        assert_eq!(
            describe(&err),
            ("email".to_owned(), "must be valid UTF-8".to_owned())
        );

        let nested = corrupt(&pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                name: "\u{7f}".into(),
                ..Default::default()
            }),
            update_mask: None,
        });
        let err = pb::UpdateCustomerRequest::decode(&nested[..]).unwrap_err();
        assert_eq!(describe(&err).0, "customer.name");

        let map_value = corrupt(&pb::CreateCustomerRequest {
            metadata: [("k".to_owned(), "\u{7f}".to_owned())].into(),
            ..Default::default()
        });
        let err = pb::CreateCustomerRequest::decode(&map_value[..]).unwrap_err();
        assert_eq!(describe(&err).0, "metadata");
    }

    #[test]
    fn a_message_that_is_not_protobuf_is_the_request() {
        // Tag 0 is no field at all.
        let err = pb::CreateCustomerRequest::decode(&[0x00, 0x00][..]).unwrap_err();
        let (field, description) = describe(&err);
        assert_eq!(field, "request");
        assert_eq!(
            description,
            "is not a valid protobuf message: invalid tag value: 0"
        );
        // A string cut short is blamed on its field.
        let err = pb::CreateCustomerRequest::decode(&[0x0a, 0x05, b'a'][..]).unwrap_err();
        assert_eq!(describe(&err).0, "external_id");
    }

    #[test]
    fn the_status_is_invalid_argument_with_a_bad_request() {
        use tonic_types::StatusExt;
        let bytes = corrupt(&pb::CreateCustomerRequest {
            external_id: "\u{7f}".into(),
            ..Default::default()
        });
        let status = undecodable(&pb::CreateCustomerRequest::decode(&bytes[..]).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_REQUEST", "coffer")
        );
        let violations = &details.bad_request().expect("bad request").field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "external_id");
    }
}
