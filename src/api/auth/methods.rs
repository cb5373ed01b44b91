//! The one table of the door: every `tally.v1` method, the permission it needs and what
//! it is charged against the caller's rate limit. A method missing from it is refused for
//! everyone.

use crate::domain::access::Permission;

/// Services and paths served without a credential: health checks and reflection.
pub const PUBLIC_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// What a call costs of its tenant's rate limit (`limits.tenant_commands_per_second`),
/// charged at the door for every method from the one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// Reads: never limited.
    Free,
    /// A call that changes something: one command.
    One,
    /// A batch: one per item, charged by its handler, which counts them.
    PerItem,
}

/// What a method needs.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// Any one of these permissions.
    AnyOf(&'static [Permission]),
    /// Any authenticated caller; the handler decides (it records the refusals that matter).
    Handler,
}

use Permission::*;

/// Every `tally.v1` method and what it needs at the door.
pub const METHODS: &[(&str, Access, Charge)] = &[
    (
        "/tally.v1.Ledger/OpenAccount",
        Access::AnyOf(&[AccountsOpen]),
        Charge::One,
    ),
    ("/tally.v1.Ledger/Award", Access::Handler, Charge::One),
    (
        "/tally.v1.Ledger/Reserve",
        Access::AnyOf(&[PointsHold, PointsHoldOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Ledger/Commit",
        Access::AnyOf(&[PointsHold, PointsHoldOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Ledger/Release",
        Access::AnyOf(&[PointsHold, PointsHoldOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Ledger/SubmitBatch",
        Access::AnyOf(&[AccountsOpen, LoyaltyAward, LoyaltyAccrue, PointsHold, PointsHoldOwn]),
        Charge::PerItem,
    ),
    (
        "/tally.v1.Ledger/GetAccount",
        Access::AnyOf(&[AccountsRead, AccountsReadOwn]),
        Charge::Free,
    ),
    (
        "/tally.v1.Ledger/GetHold",
        Access::AnyOf(&[AccountsRead, AccountsReadOwn]),
        Charge::Free,
    ),
    (
        "/tally.v1.Ledger/ListHistory",
        Access::AnyOf(&[AccountsRead, AccountsReadOwn]),
        Charge::Free,
    ),
    ("/tally.v1.Audit/Replay", Access::AnyOf(&[AuditRead]), Charge::Free),
    ("/tally.v1.Audit/Subscribe", Access::AnyOf(&[AuditRead]), Charge::Free),
    ("/tally.v1.Audit/GetDigest", Access::AnyOf(&[AuditRead]), Charge::Free),
    (
        "/tally.v1.Audit/ListByCorrelation",
        Access::AnyOf(&[AuditRead]),
        Charge::Free,
    ),
    ("/tally.v1.Audit/ListByActor", Access::AnyOf(&[AuditRead]), Charge::Free),
    (
        "/tally.v1.Audit/GetByIdempotencyKey",
        Access::AnyOf(&[AuditRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Audit/GetAccountAsOf",
        Access::AnyOf(&[AuditRead]),
        Charge::Free,
    ),
    // Rebuilds and snapshots act on every tenant's rows at once: the server's operator only.
    (
        "/tally.v1.Operations/StartRebuild",
        Access::AnyOf(&[ServerManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Operations/StartReplayToFile",
        Access::AnyOf(&[OperationsRun]),
        Charge::One,
    ),
    (
        "/tally.v1.Operations/StartProjectionSnapshot",
        Access::AnyOf(&[ServerManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Operations/GetOperation",
        Access::AnyOf(&[OperationsRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Operations/ListOperations",
        Access::AnyOf(&[OperationsRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Operations/CancelOperation",
        Access::AnyOf(&[OperationsRun]),
        Charge::One,
    ),
    ("/tally.v1.Ingest/Ingest", Access::AnyOf(&[IngestWrite]), Charge::One),
    (
        "/tally.v1.Ingest/IngestBatch",
        Access::AnyOf(&[IngestWrite]),
        Charge::PerItem,
    ),
    (
        "/tally.v1.Ingest/ListDeadLetters",
        Access::AnyOf(&[IngestRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Ingest/GetExternalEvent",
        Access::AnyOf(&[IngestRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Ingest/Redrive",
        Access::AnyOf(&[DeadLettersManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Ingest/Discard",
        Access::AnyOf(&[DeadLettersManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Ingest/GetPipelineStats",
        Access::AnyOf(&[IngestRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Links/CreateLink",
        Access::AnyOf(&[LinksWrite, LinksWriteOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Links/VerifyLink",
        Access::AnyOf(&[LinksWrite, LinksWriteOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Links/RevokeLink",
        Access::AnyOf(&[LinksWrite, LinksWriteOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Links/ListLinks",
        Access::AnyOf(&[LinksRead, LinksReadOwn]),
        Charge::Free,
    ),
    (
        "/tally.v1.Identity/StartSession",
        Access::AnyOf(&[SessionsIssue]),
        Charge::One,
    ),
    (
        "/tally.v1.Identity/ValidateSession",
        Access::AnyOf(&[SessionsIssue]),
        Charge::Free,
    ),
    (
        "/tally.v1.Identity/RefreshSession",
        Access::AnyOf(&[SessionsSelf, SessionsIssue]),
        Charge::One,
    ),
    (
        "/tally.v1.Identity/EndSession",
        Access::AnyOf(&[SessionsSelf, SessionsIssue]),
        Charge::One,
    ),
    (
        "/tally.v1.Identity/WhoAmI",
        Access::AnyOf(&[SessionsSelf]),
        Charge::Free,
    ),
    (
        "/tally.v1.Identity/CreateApiKey",
        Access::AnyOf(&[KeysManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Identity/ListApiKeys",
        Access::AnyOf(&[KeysManage]),
        Charge::Free,
    ),
    (
        "/tally.v1.Identity/RevokeApiKey",
        Access::AnyOf(&[KeysManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/RegisterEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/UpdateEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/PauseEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/ResumeEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/DeleteEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/ListEndpoints",
        Access::AnyOf(&[DeliveriesRead]),
        Charge::Free,
    ),
    ("/tally.v1.Deliveries/Ack", Access::AnyOf(&[DeliveriesAck]), Charge::One),
    (
        "/tally.v1.Deliveries/GetDelivery",
        Access::AnyOf(&[DeliveriesRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Deliveries/ListDeliveries",
        Access::AnyOf(&[DeliveriesRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Deliveries/RetryDelivery",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/RedriveDeliveries",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/GetEndpointStats",
        Access::AnyOf(&[DeliveriesRead]),
        Charge::Free,
    ),
];

/// What a method needs and what it costs, `None` if the table does not know it.
pub fn method(path: &str) -> Option<(Access, Charge)> {
    METHODS.iter().find(|(p, _, _)| *p == path).map(|(_, a, c)| (*a, *c))
}
