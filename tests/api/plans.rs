//! The plan catalogue: create, get by id and by key, list, archive; validation by field,
//! idempotency, tenancy, and amount limits a tenant narrowed in coffer.toml.

use coffer::grpc::pb::get_plan_request::Lookup;
use coffer::grpc::pb::{
    ArchivePlanRequest, CreatePlanRequest, Feature, GetPlanRequest, Interval, ListPlansRequest,
    Price,
};
use tonic::Code;

use crate::helpers::{TestApp, details, idem, req};

fn price(amount: i64, currency: &str, interval: Interval) -> Price {
    Price {
        amount,
        currency: currency.into(),
        interval: interval as i32,
        ..Default::default()
    }
}

fn switch(key: &str) -> Feature {
    Feature {
        key: key.into(),
        ..Default::default()
    }
}

fn plan(key: &str) -> CreatePlanRequest {
    CreatePlanRequest {
        key: key.into(),
        name: format!("Plan {key}"),
        description: "Everything a team needs.".into(),
        features: vec![switch("sso"), switch("api.calls")],
        prices: vec![
            Price {
                trial_days: 14,
                ..price(2_900, "USD", Interval::Month)
            },
            Price {
                interval_count: 1,
                ..price(29_000, "EUR", Interval::Year)
            },
            price(100_000, "JPY", Interval::OneTime),
        ],
    }
}

fn by_key(key: &str) -> GetPlanRequest {
    GetPlanRequest {
        lookup: Some(Lookup::Key(key.into())),
    }
}

fn by_id(id: &str) -> GetPlanRequest {
    GetPlanRequest {
        lookup: Some(Lookup::Id(id.into())),
    }
}

fn list(page_size: i32, page_token: &str, show_archived: bool) -> ListPlansRequest {
    ListPlansRequest {
        page_size,
        page_token: page_token.into(),
        show_archived,
    }
}

/// Rows of one of the catalogue's tables, named by a literal.
async fn count(app: &TestApp, table: &'static str) -> i64 {
    let sql = match table {
        "plans" => "SELECT count(*) FROM plans",
        "prices" => "SELECT count(*) FROM prices",
        "plan_features" => "SELECT count(*) FROM plan_features",
        other => panic!("not a catalogue table: {other}"),
    };
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test]
async fn create_then_get_by_id_and_key() {
    let app = TestApp::spawn().await;
    let mut s = app.subscriptions().await;
    let created = s
        .create_plan(req(plan("team"), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert!(created.id.starts_with("plan_"), "{}", created.id);
    assert_eq!(created.key, "team");
    assert_eq!(created.name, "Plan team");
    assert_eq!(created.description, "Everything a team needs.");
    let features: Vec<&str> = created.features.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(features, ["sso", "api.calls"]);
    assert!(created.archive_time.is_none());
    // Prices in the order given, each with its own id; an unset interval_count reads as 1.
    let p = &created.prices;
    assert_eq!(p.len(), 3);
    assert!(p.iter().all(|p| p.id.starts_with("price_")));
    assert_ne!(p[0].id, p[1].id);
    assert_eq!(
        (
            p[0].amount,
            p[0].currency.as_str(),
            p[0].interval,
            p[0].interval_count,
            p[0].trial_days
        ),
        (2_900, "USD", Interval::Month as i32, 1, 14)
    );
    assert_eq!(
        (
            p[1].amount,
            p[1].currency.as_str(),
            p[1].interval,
            p[1].interval_count
        ),
        (29_000, "EUR", Interval::Year as i32, 1)
    );
    assert_eq!(
        (
            p[2].amount,
            p[2].currency.as_str(),
            p[2].interval,
            p[2].interval_count,
            p[2].trial_days
        ),
        (100_000, "JPY", Interval::OneTime as i32, 0, 0)
    );
    assert_eq!(p[0].create_time, created.create_time);

    let got = s
        .get_plan(req(by_id(&created.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    let got = s
        .get_plan(req(by_key("team"), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    assert_eq!(count(&app, "prices").await, 3);
    assert_eq!(count(&app, "plan_features").await, 2);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'plan.created' AND object_type = 'plan'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn bad_plans_are_refused_by_field_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let mut s = app.subscriptions().await;
    let with_price = |p: Price| CreatePlanRequest {
        prices: vec![price(1_000, "USD", Interval::Month), p],
        ..plan("pro")
    };
    let cases: Vec<(CreatePlanRequest, Vec<&str>)> = vec![
        (
            CreatePlanRequest {
                key: "Pro Plan".into(),
                name: String::new(),
                ..plan("x")
            },
            vec!["key", "name"],
        ),
        (
            CreatePlanRequest {
                prices: vec![],
                ..plan("pro")
            },
            vec!["prices"],
        ),
        (
            CreatePlanRequest {
                features: vec![switch("sso"), switch("sso"), switch("SSO")],
                ..plan("pro")
            },
            vec!["features[1].key", "features[2].key"],
        ),
        (
            with_price(price(49, "USD", Interval::Month)),
            vec!["prices[1].amount"],
        ),
        (
            with_price(price(100_000_001, "USD", Interval::Month)),
            vec!["prices[1].amount"],
        ),
        (
            with_price(price(1_000, "usd", Interval::Month)),
            vec!["prices[1].currency"],
        ),
        (
            with_price(price(1_000, "XXX", Interval::Month)),
            vec!["prices[1].currency"],
        ),
        (
            with_price(price(1_000, "USD", Interval::Unspecified)),
            vec!["prices[1].interval"],
        ),
        (
            with_price(Price {
                interval_count: 13,
                ..price(1_000, "USD", Interval::Month)
            }),
            vec!["prices[1].interval_count"],
        ),
        (
            with_price(Price {
                interval_count: 4,
                ..price(1_000, "USD", Interval::Year)
            }),
            vec!["prices[1].interval_count"],
        ),
        (
            with_price(Price {
                interval_count: 1,
                trial_days: 7,
                ..price(1_000, "USD", Interval::OneTime)
            }),
            vec!["prices[1].interval_count", "prices[1].trial_days"],
        ),
        (
            with_price(Price {
                trial_days: 731,
                ..price(1_000, "USD", Interval::Month)
            }),
            vec!["prices[1].trial_days"],
        ),
        (
            CreatePlanRequest {
                prices: vec![price(1_000, "USD", Interval::Month); 21],
                ..plan("pro")
            },
            vec!["prices"],
        ),
        (
            CreatePlanRequest {
                features: (0..51).map(|i| switch(&format!("f{i}"))).collect(),
                ..plan("pro")
            },
            vec!["features"],
        ),
    ];
    for (request, fields) in cases {
        let err = s
            .create_plan(idem(request.clone(), &app.key, "same-key"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let (reason, got) = details(&err);
        assert_eq!(reason, "INVALID_REQUEST");
        assert_eq!(got, fields, "{request:?}");
    }
    // The amount's message says what the limits are.
    let err = s
        .create_plan(req(with_price(price(49, "USD", Interval::Month)), &app.key))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("prices[1].amount: must be between 50 and 100000000 minor units of USD"),
        "{}",
        err.message()
    );
    for (lookup, field) in [
        (by_id("plan_123"), "id"),
        (
            by_id(&coffer::domain::ids::MeterId::generate().to_string()),
            "id",
        ),
        (by_key("Not A Key"), "key"),
        (GetPlanRequest { lookup: None }, "id"),
    ] {
        let err = s.get_plan(req(lookup, &app.key)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(details(&err).1, [field]);
    }
    let err = s
        .archive_plan(req(ArchivePlanRequest { id: "x".into() }, &app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, ["id"]);
    // Malformed requests are not stored against the idempotency key: the fixed request works.
    s.create_plan(idem(plan("pro"), &app.key, "same-key"))
        .await
        .unwrap();
    assert_eq!(count(&app, "plans").await, 1);
}

#[tokio::test]
async fn keys_are_unique_per_tenant_and_creates_are_idempotent() {
    let app = TestApp::spawn().await;
    let mut s = app.subscriptions().await;
    let first = s
        .create_plan(idem(plan("pro"), &app.key, "p1"))
        .await
        .unwrap();
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let again = s
        .create_plan(idem(plan("pro"), &app.key, "p1"))
        .await
        .unwrap();
    assert_eq!(again.metadata().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.get_ref(), first.get_ref());
    // Output-only fields (a price's id and create_time) are not part of the request.
    let mut copied = plan("pro");
    for (p, from) in copied.prices.iter_mut().zip(&first.get_ref().prices) {
        p.id = from.id.clone();
        p.create_time = from.create_time;
    }
    let replay = s.create_plan(idem(copied, &app.key, "p1")).await.unwrap();
    assert_eq!(replay.get_ref(), first.get_ref());

    // The same key with another request.
    let err = s
        .create_plan(idem(
            CreatePlanRequest {
                name: "Another name".into(),
                ..plan("pro")
            },
            &app.key,
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(details(&err).0, "IDEMPOTENCY_KEY_REUSED");

    // A taken plan key is refused, and the refusal is replayed as it was.
    let taken = s
        .create_plan(idem(plan("pro"), &app.key, "p2"))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert_eq!(details(&taken).0, "PLAN_KEY_TAKEN");
    let replayed = s
        .create_plan(idem(plan("pro"), &app.key, "p2"))
        .await
        .unwrap_err();
    assert_eq!(replayed.code(), Code::AlreadyExists);
    assert_eq!(replayed.message(), taken.message());
    assert_eq!(replayed.details(), taken.details());
    assert_eq!(count(&app, "plans").await, 1);
    assert_eq!(count(&app, "prices").await, 3);
    // An archived plan keeps its key.
    s.archive_plan(req(
        ArchivePlanRequest {
            id: first.get_ref().id.clone(),
        },
        &app.key,
    ))
    .await
    .unwrap();
    let err = s.create_plan(req(plan("pro"), &app.key)).await.unwrap_err();
    assert_eq!(details(&err).0, "PLAN_KEY_TAKEN");
}

#[tokio::test]
async fn tenants_see_only_their_own_plans() {
    let app = TestApp::spawn().await;
    let mut s = app.subscriptions().await;
    let ours = s
        .create_plan(req(plan("pro"), &app.key))
        .await
        .unwrap()
        .into_inner();
    let other = app.tenant("globex").await;
    for lookup in [by_id(&ours.id), by_key("pro")] {
        let err = s.get_plan(req(lookup, &other)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(details(&err).0, "PLAN_NOT_FOUND");
    }
    let err = s
        .archive_plan(req(
            ArchivePlanRequest {
                id: ours.id.clone(),
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(details(&err).0, "PLAN_NOT_FOUND");
    let listed = s
        .list_plans(req(list(0, "", true), &other))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.plans.is_empty());
    // The same key is free for another tenant, and the first plan is untouched.
    let theirs = s
        .create_plan(req(plan("pro"), &other))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(theirs.id, ours.id);
    let got = s
        .get_plan(req(by_id(&ours.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, ours);
    // A read key reads, and cannot create.
    let reader = app
        .key(
            coffer::app::tenants::KeyFor::Tenant(
                coffer::domain::auth::TenantName::parse("acme").unwrap(),
            ),
            "read",
        )
        .await;
    s.get_plan(req(by_key("pro"), &reader)).await.unwrap();
    let err = s
        .create_plan(req(plan("basic"), &reader))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn archiving_is_idempotent_and_keeps_the_first_time() {
    let app = TestApp::spawn().await;
    let mut s = app.subscriptions().await;
    let created = s
        .create_plan(req(plan("legacy"), &app.key))
        .await
        .unwrap()
        .into_inner();
    let archive = || ArchivePlanRequest {
        id: created.id.clone(),
    };
    let archived = s
        .archive_plan(idem(archive(), &app.key, "a1"))
        .await
        .unwrap()
        .into_inner();
    let at = archived.archive_time.expect("archive_time is set");
    assert_eq!(
        coffer::grpc::pb::Plan {
            archive_time: None,
            ..archived.clone()
        },
        created,
        "nothing else changes"
    );
    // A replay under the same key, and a second archive without one, return the same plan.
    let replay = s
        .archive_plan(idem(archive(), &app.key, "a1"))
        .await
        .unwrap();
    assert_eq!(
        replay.metadata().get("idempotent-replayed").unwrap(),
        "true"
    );
    assert_eq!(replay.into_inner(), archived);
    let again = s
        .archive_plan(req(archive(), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.archive_time, Some(at));
    let got = s
        .get_plan(req(by_key("legacy"), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, archived);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'plan.archived'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(audited, 1, "only the first archive is a change");

    let unknown = coffer::domain::ids::PlanId::generate().to_string();
    let err = s
        .archive_plan(req(ArchivePlanRequest { id: unknown }, &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(details(&err).0, "PLAN_NOT_FOUND");
}

#[tokio::test]
async fn lists_page_through_active_plans_or_all() {
    let app = TestApp::spawn().await;
    let mut s = app.subscriptions().await;
    let mut ids = Vec::new();
    for key in ["a", "b", "c", "d", "e"] {
        let p = s
            .create_plan(req(plan(key), &app.key))
            .await
            .unwrap()
            .into_inner();
        ids.push(p.id);
    }
    for id in [&ids[1], &ids[3]] {
        s.archive_plan(req(ArchivePlanRequest { id: id.clone() }, &app.key))
            .await
            .unwrap();
    }
    let page_through = |show_archived: bool| {
        let mut s = s.clone();
        let key = app.key.clone();
        async move {
            let mut keys = Vec::new();
            let mut token = String::new();
            let mut pages = 0;
            loop {
                let page = s
                    .list_plans(req(list(2, &token, show_archived), &key))
                    .await
                    .unwrap()
                    .into_inner();
                pages += 1;
                assert!(page.plans.len() <= 2);
                keys.extend(page.plans.into_iter().map(|p| p.key));
                if page.next_page_token.is_empty() {
                    return (keys, pages);
                }
                token = page.next_page_token;
            }
        }
    };
    assert_eq!(
        page_through(false).await,
        (vec!["a".into(), "c".into(), "e".into()], 2)
    );
    assert_eq!(
        page_through(true).await,
        (["a", "b", "c", "d", "e"].map(String::from).to_vec(), 3)
    );
    // The default page holds everything here, with the prices and features of each plan.
    let all = s
        .list_plans(req(list(0, "", true), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.plans.len(), 5);
    assert!(all.next_page_token.is_empty());
    assert!(
        all.plans
            .iter()
            .all(|p| p.prices.len() == 3 && p.features.len() == 2)
    );
    assert!(all.plans[1].archive_time.is_some() && all.plans[0].archive_time.is_none());

    // A token is bound to its filter.
    let first = s
        .list_plans(req(list(1, "", false), &app.key))
        .await
        .unwrap()
        .into_inner();
    let err = s
        .list_plans(req(list(1, &first.next_page_token, true), &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, ["page_token"]);
    let err = s
        .list_plans(req(list(-1, "", false), &app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, ["page_size"]);
}

#[tokio::test]
async fn prices_cannot_change_in_the_database() {
    let app = TestApp::spawn().await;
    let mut s = app.subscriptions().await;
    s.create_plan(req(plan("pro"), &app.key)).await.unwrap();
    let err = sqlx::query("UPDATE prices SET amount = amount + 1")
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("prices are immutable"), "{err}");
    let amounts: Vec<i64> = sqlx::query_scalar("SELECT amount FROM prices ORDER BY position")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(amounts, [2_900, 29_000, 100_000]);
}

#[tokio::test]
async fn a_tenant_narrows_its_amount_limits_in_coffer_toml() {
    let app = TestApp::spawn_with_settings(
        r#"
        [tenant.acme.amount_limits]
        HUF = { min = 10000, max = 500000 }
        "#,
        &[],
    )
    .await;
    let mut s = app.subscriptions().await;
    let huf = |amount: i64| CreatePlanRequest {
        prices: vec![price(amount, "HUF", Interval::Month)],
        ..plan(&format!("huf-{amount}"))
    };
    for amount in [9_999, 500_001] {
        let err = s.create_plan(req(huf(amount), &app.key)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(details(&err).1, ["prices[0].amount"]);
        assert!(
            err.message()
                .contains("must be between 10000 and 500000 minor units of HUF"),
            "{}",
            err.message()
        );
    }
    for amount in [10_000, 500_000] {
        s.create_plan(req(huf(amount), &app.key)).await.unwrap();
    }
    // Other currencies keep their defaults.
    s.create_plan(req(
        CreatePlanRequest {
            prices: vec![price(50, "USD", Interval::Month)],
            ..plan("usd")
        },
        &app.key,
    ))
    .await
    .unwrap();
    // A tenant the file does not name has the defaults (HUF from 100).
    let other = app.tenant("globex").await;
    s.create_plan(req(huf(9_999), &other)).await.unwrap();
}

#[tokio::test]
async fn the_service_is_reflected_and_reported_by_health() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "coffer.v1.Subscriptions".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "coffer.v1.Subscriptions"),
        "{list:?}"
    );
}

/// Concurrent creates of one key: exactly one plan (with its children) is written, and every
/// other call is PLAN_KEY_TAKEN, found by the statement rather than by a failed insert.
#[tokio::test]
async fn concurrent_creates_of_one_key_write_one_plan() {
    let app = TestApp::spawn().await;
    let s = app.subscriptions().await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..12 {
        let mut s = s.clone();
        let key = app.key.clone();
        calls.spawn(async move {
            let request = CreatePlanRequest {
                name: format!("Attempt {i}"),
                ..plan("race")
            };
            s.create_plan(req(request, &key)).await
        });
    }
    let (mut created, mut taken) = (0, 0);
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(_) => created += 1,
            Err(e) => {
                assert_eq!(details(&e).0, "PLAN_KEY_TAKEN", "{e:?}");
                taken += 1;
            }
        }
    }
    assert_eq!((created, taken), (1, 11));
    assert_eq!(count(&app, "plans").await, 1);
    assert_eq!(count(&app, "prices").await, 3);
    assert_eq!(count(&app, "plan_features").await, 2);
}

/// A metered price names a meter of the tenant's: a bad key, an unknown one or a ONE_TIME price
/// is INVALID_ARGUMENT naming `prices[i].meter_key`, and nothing is written; a known one is
/// kept and read back.
#[tokio::test]
async fn a_metered_price_names_a_known_meter_of_a_recurring_price() {
    let app = TestApp::spawn().await;
    let mut s = app.subscriptions().await;
    let metered = |interval, key: &str| Price {
        meter_key: key.into(),
        ..price(50, "USD", interval)
    };
    let with = |p: Price| CreatePlanRequest {
        prices: vec![price(2_900, "USD", Interval::Month), p],
        ..plan("usage")
    };
    for request in [
        with(metered(Interval::Month, "Not A Key")),
        with(metered(Interval::Month, "tokens")),
        with(metered(Interval::OneTime, "tokens")),
    ] {
        let err = s.create_plan(req(request, &app.key)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(details(&err).1, ["prices[1].meter_key"]);
    }
    let plans: i64 = sqlx::query_scalar("SELECT count(*) FROM plans")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(plans, 0, "nothing written");

    app.usage()
        .await
        .create_meter(req(
            coffer::grpc::pb::CreateMeterRequest {
                key: "tokens".into(),
                aggregation: coffer::grpc::pb::Aggregation::Sum as i32,
                value_key: "tokens".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap();
    let made = s
        .create_plan(req(with(metered(Interval::Month, "tokens")), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.prices[0].meter_key, "");
    assert_eq!(made.prices[1].meter_key, "tokens");
    let got = s
        .get_plan(req(
            GetPlanRequest {
                lookup: Some(Lookup::Id(made.id.clone())),
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, made);
}

/// A metered feature names one of the tenant's COUNT or SUM meters and reads back as created;
/// a missing or non-additive meter, or a limit on a switch, is INVALID_ARGUMENT naming the
/// field, and nothing is written.
#[tokio::test]
async fn metered_features_name_an_existing_additive_meter() {
    use coffer::grpc::pb::{Aggregation, CreateMeterRequest};
    let app = TestApp::spawn().await;
    let mut usage = app.usage().await;
    for (key, aggregation, value_key) in [
        ("calls", Aggregation::Count, ""),
        ("peak", Aggregation::Max, "v"),
    ] {
        usage
            .create_meter(req(
                CreateMeterRequest {
                    key: key.into(),
                    aggregation: aggregation as i32,
                    value_key: value_key.into(),
                    ..Default::default()
                },
                &app.key,
            ))
            .await
            .unwrap();
    }
    let metered = |key: &str, meter: &str, limit: i64| Feature {
        key: key.into(),
        meter_key: meter.into(),
        limit_per_period: limit,
    };
    let mut s = app.subscriptions().await;
    let made = s
        .create_plan(req(
            CreatePlanRequest {
                features: vec![switch("reports"), metered("api_calls", "calls", 100)],
                ..plan("pro")
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.features[1], metered("api_calls", "calls", 100));
    let got = s
        .get_plan(req(by_key("pro"), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.features, made.features);

    for (features, field) in [
        (
            vec![switch("reports"), metered("api_calls", "nope", 100)],
            "features[1].meter_key",
        ),
        (vec![metered("peak", "peak", 1)], "features[0].meter_key"),
        (vec![metered("x", "Calls", 1)], "features[0].meter_key"),
        (
            vec![metered("x", "calls", -1)],
            "features[0].limit_per_period",
        ),
        (vec![metered("x", "", 5)], "features[0].limit_per_period"),
    ] {
        let err = s
            .create_plan(req(
                CreatePlanRequest {
                    features,
                    ..plan("other")
                },
                &app.key,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(details(&err).1, vec![field.to_owned()]);
    }
    let err = s
        .get_plan(req(by_key("other"), &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
