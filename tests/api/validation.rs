//! Bad input gets INVALID_ARGUMENT naming every bad field, and changes nothing.

use std::collections::BTreeMap;

use coffer::grpc::pb::{
    self, CreateCustomerRequest, DeleteCustomerRequest, GetCustomerRequest, ListCustomersRequest,
    UpdateCustomerRequest,
};
use prost::Message;
use prost::bytes::BufMut;
use tonic::Code;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic_prost::ProstDecoder;

use crate::helpers::{TestApp, by_external_id, by_id, details, idem, req, update};

#[tokio::test]
async fn create_names_each_bad_field() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let many_keys: BTreeMap<String, String> =
        (0..46).map(|i| (format!("k{i}"), "v".into())).collect();
    let cases: Vec<(CreateCustomerRequest, Vec<&str>)> = vec![
        (
            CreateCustomerRequest {
                email: "not-an-email".into(),
                ..Default::default()
            },
            vec!["email"],
        ),
        (
            CreateCustomerRequest {
                email: format!("{}@example.com", "a".repeat(250)),
                ..Default::default()
            },
            vec!["email"],
        ),
        (
            CreateCustomerRequest {
                name: "n".repeat(257),
                ..Default::default()
            },
            vec!["name"],
        ),
        (
            CreateCustomerRequest {
                external_id: "naïve".into(),
                ..Default::default()
            },
            vec!["external_id"],
        ),
        (
            CreateCustomerRequest {
                external_id: "x".repeat(256),
                ..Default::default()
            },
            vec!["external_id"],
        ),
        (
            CreateCustomerRequest {
                metadata: many_keys,
                ..Default::default()
            },
            vec!["metadata"],
        ),
        (
            CreateCustomerRequest {
                metadata: BTreeMap::from([("k".repeat(41), "v".into())]),
                ..Default::default()
            },
            vec!["metadata"],
        ),
        (
            CreateCustomerRequest {
                metadata: BTreeMap::from([("k".into(), "v".repeat(501))]),
                ..Default::default()
            },
            vec!["metadata"],
        ),
        // Every bad field at once, each named.
        (
            CreateCustomerRequest {
                external_id: "\u{7}".into(),
                email: "@".into(),
                name: "\u{0}".into(),
                metadata: BTreeMap::from([(String::new(), "v".into())]),
            },
            vec!["external_id", "email", "name", "metadata"],
        ),
    ];
    for (request, fields) in cases {
        let err = c
            .create_customer(req(request.clone(), &app.key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}");
        let (reason, got) = details(&err);
        assert_eq!(reason, "INVALID_REQUEST");
        assert_eq!(got, fields, "{request:?}");
    }
    assert_eq!(app.customer_rows().await, 0, "nothing was written");
}

#[tokio::test]
async fn ids_are_checked_for_shape_and_prefix() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let wrong_prefix = format!("key_{}", "0".repeat(26));
    for (id, _why) in [
        ("", "empty"),
        ("customer_123", "short"),
        (wrong_prefix.as_str(), "wrong prefix"),
        ("customer_0000000000000000000000000U", "upper case"),
    ] {
        let err = c.get_customer(req(by_id(id), &app.key)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id}");
        assert_eq!(details(&err).1, vec!["id"]);
        let err = c
            .delete_customer(req(DeleteCustomerRequest { id: id.into() }, &app.key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id}");
    }
    let err = c
        .get_customer(req(GetCustomerRequest { lookup: None }, &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .get_customer(req(by_external_id(""), &app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["external_id"]);
}

#[tokio::test]
async fn update_refuses_unknown_paths_and_bad_values() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let created = c
        .create_customer(req(
            CreateCustomerRequest {
                email: "a@example.com".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();

    let err = c
        .update_customer(req(
            update(
                pb::Customer {
                    id: created.id.clone(),
                    ..Default::default()
                },
                &["id"],
            ),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, vec!["update_mask"]);

    let err = c
        .update_customer(req(
            update(
                pb::Customer {
                    id: created.id.clone(),
                    email: "bad".into(),
                    ..Default::default()
                },
                &["email"],
            ),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["customer.email"]);

    let err = c
        .update_customer(req(UpdateCustomerRequest::default(), &app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["customer"]);

    let unchanged = c
        .get_customer(req(by_id(&created.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, created);
}

#[tokio::test]
async fn list_and_metadata_arguments_are_checked() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let err = c
        .list_customers(req(
            ListCustomersRequest {
                page_size: -1,
                email: "nope".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, vec!["page_size", "email"]);
    let err = c
        .list_customers(req(
            ListCustomersRequest {
                page_token: "not a token".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["page_token"]);

    // A malformed idempotency key is the caller's mistake too, and claims nothing.
    let err = c
        .create_customer(idem(
            CreateCustomerRequest::default(),
            &app.key,
            &"k".repeat(256),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, vec!["idempotency-key"]);
    assert_eq!(app.customer_rows().await, 0);
}

/// Rows in the tables a refused request must not touch.
async fn written(app: &TestApp) -> (i64, i64) {
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    (app.customer_rows().await, keys)
}

#[tokio::test]
async fn invisible_characters_are_refused_in_every_text_field() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let create = |f: fn(&mut CreateCustomerRequest)| {
        let mut r = CreateCustomerRequest::default();
        f(&mut r);
        r
    };
    let cases: Vec<(CreateCustomerRequest, &str, &str)> = vec![
        // Postgres cannot store NUL in jsonb: this was INTERNAL, with the value in its log.
        (
            create(|r| r.metadata = BTreeMap::from([("k".into(), "v\u{0}".into())])),
            "metadata",
            "value of key \"k\" must not contain",
        ),
        (
            create(|r| r.metadata = BTreeMap::from([("k".into(), "\u{202e}fdp.exe".into())])),
            "metadata",
            "value of key \"k\" must not contain",
        ),
        (
            create(|r| r.metadata = BTreeMap::from([("k\u{200b}".into(), "v".into())])),
            "metadata",
            "keys must not contain",
        ),
        (
            create(|r| r.email = "a@b.c\u{200b}".into()),
            "email",
            "(found U+200B)",
        ),
        (
            create(|r| r.email = "\u{202e}evil@x.com".into()),
            "email",
            "(found U+202E)",
        ),
        (
            create(|r| r.email = "a@b.co\u{0}".into()),
            "email",
            "(found U+0000)",
        ),
        (
            create(|r| r.name = "Ada\u{2066}Lovelace".into()),
            "name",
            "(found U+2066)",
        ),
        (
            create(|r| r.name = "Ada\u{feff}".into()),
            "name",
            "(found U+FEFF)",
        ),
        (
            create(|r| r.external_id = "user-42 ".into()),
            "external_id",
            "must not start or end with a space",
        ),
        (
            create(|r| r.external_id = " user-42".into()),
            "external_id",
            "must not start or end with a space",
        ),
    ];
    for (request, field, says) in cases {
        let err = c
            .create_customer(idem(request.clone(), &app.key, "invisible"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert_eq!(
            details(&err),
            ("INVALID_REQUEST".to_owned(), vec![field.to_owned()]),
            "{request:?}"
        );
        assert!(
            err.message().contains(says),
            "{request:?}: {}",
            err.message()
        );
    }
    assert_eq!(
        written(&app).await,
        (0, 0),
        "nothing was written or claimed"
    );

    let created = c
        .create_customer(req(
            CreateCustomerRequest {
                external_id: "user-42".into(),
                name: "مهر\u{200c}نوش".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .expect("joiners a script needs are kept in names")
        .into_inner();
    let bad_updates = [
        (
            pb::Customer {
                metadata: BTreeMap::from([("k".into(), "v\u{0}".into())]),
                ..Default::default()
            },
            "customer.metadata",
        ),
        (
            pb::Customer {
                email: "a\u{200d}b@x.com".into(),
                ..Default::default()
            },
            "customer.email",
        ),
        (
            pb::Customer {
                name: "\u{202e}Ada".into(),
                ..Default::default()
            },
            "customer.name",
        ),
        (
            pb::Customer {
                external_id: "user-42 ".into(),
                ..Default::default()
            },
            "customer.external_id",
        ),
    ];
    for (customer, field) in bad_updates {
        let customer = pb::Customer {
            id: created.id.clone(),
            ..customer
        };
        let err = c
            .update_customer(idem(update(customer, &[]), &app.key, "invisible"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(details(&err).1, vec![field]);
    }
    let unchanged = c
        .get_customer(req(by_id(&created.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, created);
    assert_eq!(written(&app).await, (1, 0));

    // Lookups follow the same rules, so a look-alike never finds a customer.
    let err = c
        .get_customer(req(by_external_id("user-42 "), &app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["external_id"]);
    let err = c
        .list_customers(req(
            ListCustomersRequest {
                email: "a@b.c\u{200b}".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["email"]);
}

#[tokio::test]
async fn idempotency_keys_with_outer_spaces_are_refused() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    for key in [" k", "k ", " k "] {
        let err = c
            .create_customer(idem(CreateCustomerRequest::default(), &app.key, key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{key:?}: {err:?}");
        assert_eq!(details(&err).1, vec!["idempotency-key"], "{key:?}");
    }
    assert_eq!(written(&app).await, (0, 0));
}

/// Sends bytes exactly as given, so a test can send what no well-behaved encoder would, and
/// decodes the answer as a `Customer`.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::Customer;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<pb::Customer>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<pb::Customer> {
        ProstDecoder::default()
    }
}

/// `message` encoded, with the byte of its one DEL character (a placeholder inside a string)
/// replaced by 0xff, which is never valid UTF-8.
fn not_utf8<M: Message>(message: &M) -> Vec<u8> {
    let mut bytes = message.encode_to_vec();
    let at: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] == 0x7f).collect();
    assert_eq!(at.len(), 1, "one placeholder");
    bytes[at[0]] = 0xff;
    bytes
}

async fn send_raw(
    channel: Channel,
    key: &str,
    method: &'static str,
    bytes: Vec<u8>,
) -> Result<pb::Customer, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(idem(bytes, key, "raw"), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn invalid_utf8_is_invalid_argument_naming_the_field() {
    let app = TestApp::spawn().await;
    const CREATE: &str = "/coffer.v1.Customers/CreateCustomer";
    const UPDATE: &str = "/coffer.v1.Customers/UpdateCustomer";
    let cases: Vec<(&'static str, Vec<u8>, &str)> = vec![
        (
            CREATE,
            not_utf8(&CreateCustomerRequest {
                email: "a\u{7f}@b.co".into(),
                ..Default::default()
            }),
            "email",
        ),
        (
            CREATE,
            not_utf8(&CreateCustomerRequest {
                metadata: BTreeMap::from([("k".into(), "v\u{7f}".into())]),
                ..Default::default()
            }),
            "metadata",
        ),
        (
            UPDATE,
            not_utf8(&update(
                pb::Customer {
                    id: "customer_01jd0000000000000000000000".into(),
                    name: "\u{7f}".into(),
                    ..Default::default()
                },
                &[],
            )),
            "customer.name",
        ),
        // Not protobuf at all (tag 0): no field to name.
        (CREATE, vec![0, 0], "request"),
    ];
    for (method, bytes, field) in cases {
        let err = send_raw(app.channel().await, &app.key, method, bytes)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(
            details(&err),
            ("INVALID_REQUEST".to_owned(), vec![field.to_owned()]),
        );
    }
    assert_eq!(written(&app).await, (0, 0));

    // The same path with valid bytes is served, so the refusals above are about the bytes.
    let ok = CreateCustomerRequest {
        email: "a@b.co".into(),
        ..Default::default()
    };
    let created = send_raw(app.channel().await, &app.key, CREATE, ok.encode_to_vec())
        .await
        .unwrap();
    assert_eq!(created.email, "a@b.co");
}
