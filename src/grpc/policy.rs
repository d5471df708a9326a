//! The policy table: for every RPC the server answers, the scope it needs, whether it honours
//! `idempotency-key`, its call type and the names its metrics carry. Authentication, telemetry
//! and the list of services health reports on all read this one table, and a test checks it
//! against the compiled descriptors, so a new RPC without a policy fails the tests instead of
//! getting a default.
//!
//! A path that is not in the table is answered UNIMPLEMENTED by the auth layer before any key
//! is looked up, and is counted under `unknown` by telemetry.

use crate::domain::auth::Scope;

use CallType::{BidiStream, ServerStream, Unary};

/// The shape of a call, as the descriptors' `client_streaming` and `server_streaming` flags
/// say and as go-grpc-prometheus labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl CallType {
    /// The `grpc_type` label value.
    pub fn as_label(self) -> &'static str {
        match self {
            CallType::Unary => "unary",
            CallType::ClientStream => "client_stream",
            CallType::ServerStream => "server_stream",
            CallType::BidiStream => "bidi_stream",
        }
    }
}

/// What one RPC needs and how it is labelled.
#[derive(Debug, PartialEq, Eq)]
pub struct Policy {
    /// Fully-qualified service name, `coffer.v1.Customers`: the `grpc_service` label and the
    /// span's `rpc.service`.
    pub service: &'static str,
    /// Method name, `CreateCustomer`: the `grpc_method` label and the span's `rpc.method`.
    pub method: &'static str,
    /// The scope an API key needs; `None` for the public health and reflection services.
    pub scope: Option<Scope>,
    /// Whether the method honours the `idempotency-key` metadata.
    pub idempotent: bool,
    pub call_type: CallType,
}

impl Policy {
    /// Whether the method stays open until one side ends it (any streaming kind).
    pub fn is_stream(&self) -> bool {
        self.call_type != CallType::Unary
    }

    /// Whether the method only reads: public, or needing no more than the `read` scope. A call
    /// of any other method may have written something by the time it is cut short.
    pub fn reads_only(&self) -> bool {
        matches!(self.scope, None | Some(Scope::Read))
    }
}

/// One service and its methods.
#[derive(Debug)]
pub struct Service {
    pub name: &'static str,
    /// Whether health reports a status for it. Coffer's own services follow the database;
    /// health and reflection answer whatever its state.
    pub health_reported: bool,
    pub methods: &'static [Policy],
}

const CUSTOMERS: &str = "coffer.v1.Customers";
const USAGE: &str = "coffer.v1.Usage";
const SUBSCRIPTIONS: &str = "coffer.v1.Subscriptions";
const PROVIDER_EVENTS: &str = "coffer.v1.ProviderEvents";
const CHECKOUT: &str = "coffer.v1.Checkout";
pub const SANDBOX: &str = "coffer.v1.Sandbox";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

const fn rpc(
    service: &'static str,
    method: &'static str,
    scope: Option<Scope>,
    idempotent: bool,
    call_type: CallType,
) -> Policy {
    Policy {
        service,
        method,
        scope,
        idempotent,
        call_type,
    }
}

/// Every service the server answers, with every method's policy.
pub const SERVICES: &[Service] = &[
    Service {
        name: CUSTOMERS,
        health_reported: true,
        methods: &[
            rpc(CUSTOMERS, "CreateCustomer", Some(Scope::Write), true, Unary),
            rpc(CUSTOMERS, "GetCustomer", Some(Scope::Read), false, Unary),
            rpc(CUSTOMERS, "UpdateCustomer", Some(Scope::Write), true, Unary),
            rpc(CUSTOMERS, "DeleteCustomer", Some(Scope::Write), true, Unary),
            rpc(CUSTOMERS, "ListCustomers", Some(Scope::Read), false, Unary),
            // Opens a provider session; a retry under the key answers the same URL.
            rpc(
                CUSTOMERS,
                "CreatePortalSession",
                Some(Scope::Write),
                true,
                Unary,
            ),
        ],
    },
    Service {
        name: USAGE,
        health_reported: true,
        methods: &[
            rpc(USAGE, "CreateMeter", Some(Scope::Write), true, Unary),
            rpc(USAGE, "GetMeter", Some(Scope::Read), false, Unary),
            rpc(USAGE, "ListMeters", Some(Scope::Read), false, Unary),
            // Events de-duplicate by their own ids, not by idempotency-key.
            rpc(USAGE, "RecordUsage", Some(Scope::Write), false, Unary),
            rpc(USAGE, "StreamUsage", Some(Scope::Write), false, BidiStream),
            rpc(USAGE, "GetUsage", Some(Scope::Read), false, Unary),
            rpc(USAGE, "GrantCredits", Some(Scope::Write), true, Unary),
            rpc(USAGE, "GetBalance", Some(Scope::Read), false, Unary),
        ],
    },
    Service {
        name: SUBSCRIPTIONS,
        health_reported: true,
        methods: &[
            rpc(SUBSCRIPTIONS, "CreatePlan", Some(Scope::Write), true, Unary),
            rpc(SUBSCRIPTIONS, "GetPlan", Some(Scope::Read), false, Unary),
            rpc(SUBSCRIPTIONS, "ListPlans", Some(Scope::Read), false, Unary),
            rpc(
                SUBSCRIPTIONS,
                "ArchivePlan",
                Some(Scope::Write),
                true,
                Unary,
            ),
            rpc(
                SUBSCRIPTIONS,
                "GetSubscription",
                Some(Scope::Read),
                false,
                Unary,
            ),
            rpc(
                SUBSCRIPTIONS,
                "ListSubscriptions",
                Some(Scope::Read),
                false,
                Unary,
            ),
            // Made through the provider, idempotent.
            rpc(
                SUBSCRIPTIONS,
                "CreateSubscription",
                Some(Scope::Write),
                true,
                Unary,
            ),
            // The lifecycle: changes through the provider, idempotent.
            rpc(
                SUBSCRIPTIONS,
                "CancelSubscription",
                Some(Scope::Write),
                true,
                Unary,
            ),
            rpc(
                SUBSCRIPTIONS,
                "UndoCancelSubscription",
                Some(Scope::Write),
                true,
                Unary,
            ),
            rpc(
                SUBSCRIPTIONS,
                "PauseSubscription",
                Some(Scope::Write),
                true,
                Unary,
            ),
            rpc(
                SUBSCRIPTIONS,
                "ResumeSubscription",
                Some(Scope::Write),
                true,
                Unary,
            ),
            rpc(
                SUBSCRIPTIONS,
                "ChangeSubscriptionPlan",
                Some(Scope::Write),
                true,
                Unary,
            ),
            // No side effect: a read.
            rpc(
                SUBSCRIPTIONS,
                "PreviewPlanChange",
                Some(Scope::Read),
                false,
                Unary,
            ),
            rpc(
                SUBSCRIPTIONS,
                "CheckAccess",
                Some(Scope::Read),
                false,
                Unary,
            ),
            rpc(
                SUBSCRIPTIONS,
                "WatchSubscriptionEvents",
                Some(Scope::Read),
                false,
                ServerStream,
            ),
        ],
    },
    Service {
        name: PROVIDER_EVENTS,
        health_reported: true,
        methods: &[
            // De-duplicated by the provider's event id, not by idempotency-key.
            rpc(
                PROVIDER_EVENTS,
                "IngestEvent",
                Some(Scope::EventsIngest),
                false,
                Unary,
            ),
            rpc(
                PROVIDER_EVENTS,
                "ListEvents",
                Some(Scope::Admin),
                false,
                Unary,
            ),
            rpc(
                PROVIDER_EVENTS,
                "ReplayEvent",
                Some(Scope::Admin),
                true,
                Unary,
            ),
        ],
    },
    Service {
        name: CHECKOUT,
        health_reported: true,
        methods: &[
            rpc(
                CHECKOUT,
                "CreateCheckoutSession",
                Some(Scope::Write),
                true,
                Unary,
            ),
            rpc(
                CHECKOUT,
                "GetCheckoutSession",
                Some(Scope::Read),
                false,
                Unary,
            ),
            rpc(
                CHECKOUT,
                "ListCheckoutSessions",
                Some(Scope::Read),
                false,
                Unary,
            ),
            rpc(
                CHECKOUT,
                "ExpireCheckoutSession",
                Some(Scope::Write),
                true,
                Unary,
            ),
            // Writes only what the provider already says, as an event would: a read.
            rpc(
                CHECKOUT,
                "VerifyCheckoutSession",
                Some(Scope::Read),
                false,
                Unary,
            ),
            rpc(CHECKOUT, "GetPayment", Some(Scope::Read), false, Unary),
            rpc(CHECKOUT, "ListPayments", Some(Scope::Read), false, Unary),
            rpc(CHECKOUT, "RefundPayment", Some(Scope::Write), true, Unary),
        ],
    },
    // Served only with the sandbox (`serve --dev` / `--sandbox`); health does not report on
    // a service that may not be there.
    Service {
        name: SANDBOX,
        health_reported: false,
        methods: &[rpc(
            SANDBOX,
            "AdvanceClock",
            Some(Scope::Write),
            true,
            Unary,
        )],
    },
    Service {
        name: HEALTH,
        health_reported: false,
        methods: &[
            rpc(HEALTH, "Check", None, false, Unary),
            rpc(HEALTH, "Watch", None, false, ServerStream),
        ],
    },
    Service {
        name: REFLECTION_V1,
        health_reported: false,
        methods: &[rpc(
            REFLECTION_V1,
            "ServerReflectionInfo",
            None,
            false,
            BidiStream,
        )],
    },
    Service {
        name: REFLECTION_V1ALPHA,
        health_reported: false,
        methods: &[rpc(
            REFLECTION_V1ALPHA,
            "ServerReflectionInfo",
            None,
            false,
            BidiStream,
        )],
    },
];

const fn health_reported_count() -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < SERVICES.len() {
        if SERVICES[i].health_reported {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The names of the services health reports on, besides the whole server (""), in table
/// order. Computed at compile time so it can stay a plain `&[&str]` constant.
pub const HEALTH_REPORTED: [&str; health_reported_count()] = {
    let mut names = [""; health_reported_count()];
    let mut n = 0;
    let mut i = 0;
    while i < SERVICES.len() {
        if SERVICES[i].health_reported {
            names[n] = SERVICES[i].name;
            n += 1;
        }
        i += 1;
    }
    names
};

/// The policy of a request path (`/coffer.v1.Customers/CreateCustomer`), or `None` for a
/// path no service answers. Allocates nothing, so a made-up path costs a few comparisons.
pub fn of(path: &str) -> Option<&'static Policy> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    SERVICES
        .iter()
        .find(|s| s.name == service)?
        .methods
        .iter()
        .find(|p| p.method == method)
}

/// Every policy in the table.
pub fn all() -> impl Iterator<Item = &'static Policy> {
    SERVICES.iter().flat_map(|s| s.methods.iter())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::*;

    /// Every method of every service the server registers, as `/service/method` → call type,
    /// read from the same descriptor sets the server is built from.
    fn described_methods() -> BTreeMap<String, CallType> {
        let sets = [
            crate::grpc::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = BTreeMap::new();
        for bytes in sets {
            let set = FileDescriptorSet::decode(bytes).expect("an embedded descriptor set");
            for file in set.file {
                for service in &file.service {
                    let service_name = format!("{}.{}", file.package(), service.name());
                    for m in &service.method {
                        let call_type = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => CallType::Unary,
                            (true, false) => CallType::ClientStream,
                            (false, true) => CallType::ServerStream,
                            (true, true) => CallType::BidiStream,
                        };
                        let path = format!("/{service_name}/{}", m.name());
                        assert!(
                            methods.insert(path.clone(), call_type).is_none(),
                            "{path} is described twice"
                        );
                    }
                }
            }
        }
        methods
    }

    #[test]
    fn every_described_method_has_exactly_one_policy_of_its_call_type() {
        let described = described_methods();
        assert!(described.contains_key("/coffer.v1.Customers/CreateCustomer"));
        for (path, call_type) in &described {
            let policies: Vec<&Policy> = all()
                .filter(|p| format!("/{}/{}", p.service, p.method) == *path)
                .collect();
            assert_eq!(policies.len(), 1, "{path} needs exactly one policy");
            assert_eq!(policies[0].call_type, *call_type, "{path}");
            assert_eq!(of(path), Some(policies[0]), "{path}");
        }
    }

    #[test]
    fn every_policy_names_a_described_method() {
        let described = described_methods();
        for service in SERVICES {
            assert!(!service.methods.is_empty(), "{}", service.name);
            for p in service.methods {
                assert_eq!(
                    p.service, service.name,
                    "{} is filed under its service",
                    p.method
                );
                let path = format!("/{}/{}", p.service, p.method);
                assert!(described.contains_key(&path), "{path} is not a real method");
            }
        }
        assert_eq!(all().count(), described.len());
    }

    #[test]
    fn public_methods_are_health_and_reflection_only() {
        for p in all() {
            let public =
                p.service.starts_with("grpc.health.") || p.service.starts_with("grpc.reflection.");
            assert_eq!(p.scope.is_none(), public, "{}/{}", p.service, p.method);
        }
    }

    #[test]
    fn only_writes_honour_idempotency_keys() {
        for p in all().filter(|p| p.idempotent) {
            assert!(
                matches!(p.scope, Some(Scope::Write | Scope::Admin)),
                "{}/{} is idempotent but does not need write or admin",
                p.service,
                p.method
            );
        }
    }

    #[test]
    fn unknown_paths_have_no_policy() {
        for path in [
            "",
            "/",
            "//",
            "coffer.v1.Customers/CreateCustomer",
            "/coffer.v1.Customers/",
            "/coffer.v1.Customers/CreateCustomer/",
            "/coffer.v1.Customers/createcustomer",
            "/coffer.v1.Customer/CreateCustomer",
            "/grpc.health.v1.Health/List",
            &format!("/coffer.v1.Customers/{}", "x".repeat(4096)),
        ] {
            assert_eq!(of(path), None, "{path}");
        }
    }

    #[test]
    fn health_reports_on_the_coffer_services() {
        assert_eq!(
            HEALTH_REPORTED,
            [
                "coffer.v1.Customers",
                "coffer.v1.Usage",
                "coffer.v1.Subscriptions",
                "coffer.v1.ProviderEvents",
                "coffer.v1.Checkout"
            ]
        );
    }
}
