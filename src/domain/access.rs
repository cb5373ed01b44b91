//! Who may do what: roles and the permissions they grant. Pure data, used by the API's
//! door (which checks them) and by the session rules (which roles a service may assert).
//! Names are stable: they appear in tokens, API keys and the log.

/// A named permission. `…Own` variants allow the same thing on the caller's own account
/// only (the account id equals the caller's subject).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    AccountsOpen,
    AccountsRead,
    AccountsReadOwn,
    /// Manual rewards (staff comps).
    LoyaltyAward,
    /// Gameplay accrual and promotion awards.
    LoyaltyAccrue,
    PointsHold,
    PointsHoldOwn,
    IngestWrite,
    IngestRead,
    DeadLettersManage,
    AuditRead,
    OperationsRead,
    OperationsRun,
    LinksWrite,
    LinksWriteOwn,
    LinksRead,
    LinksReadOwn,
    SessionsIssue,
    /// Refresh or end one's own session.
    SessionsSelf,
    KeysManage,
    /// Register, change, pause and delete endpoints; retry deliveries by hand.
    DeliveriesManage,
    DeliveriesRead,
    /// Acknowledge deliveries (the receiving service).
    DeliveriesAck,
    /// Jobs that act on the whole server, every tenant at once (projection rebuilds and
    /// snapshots), and every tenant's operations. No tenant's role grants it.
    ServerManage,
}

impl Permission {
    pub const ALL: [Permission; 24] = [
        Permission::AccountsOpen,
        Permission::AccountsRead,
        Permission::AccountsReadOwn,
        Permission::LoyaltyAward,
        Permission::LoyaltyAccrue,
        Permission::PointsHold,
        Permission::PointsHoldOwn,
        Permission::IngestWrite,
        Permission::IngestRead,
        Permission::DeadLettersManage,
        Permission::AuditRead,
        Permission::OperationsRead,
        Permission::OperationsRun,
        Permission::LinksWrite,
        Permission::LinksWriteOwn,
        Permission::LinksRead,
        Permission::LinksReadOwn,
        Permission::SessionsIssue,
        Permission::SessionsSelf,
        Permission::KeysManage,
        Permission::DeliveriesManage,
        Permission::DeliveriesRead,
        Permission::DeliveriesAck,
        Permission::ServerManage,
    ];

    pub fn name(self) -> &'static str {
        use Permission::*;
        match self {
            AccountsOpen => "accounts:open",
            AccountsRead => "accounts:read",
            AccountsReadOwn => "accounts:read:own",
            LoyaltyAward => "loyalty:award",
            LoyaltyAccrue => "loyalty:accrue",
            PointsHold => "points:hold",
            PointsHoldOwn => "points:hold:own",
            IngestWrite => "ingest:write",
            IngestRead => "ingest:read",
            DeadLettersManage => "dlq:manage",
            AuditRead => "audit:read",
            OperationsRead => "operations:read",
            OperationsRun => "operations:run",
            LinksWrite => "links:write",
            LinksWriteOwn => "links:write:own",
            LinksRead => "links:read",
            LinksReadOwn => "links:read:own",
            SessionsIssue => "sessions:issue",
            SessionsSelf => "sessions:self",
            KeysManage => "keys:manage",
            DeliveriesManage => "deliveries:manage",
            DeliveriesRead => "deliveries:read",
            DeliveriesAck => "deliveries:ack",
            ServerManage => "server:manage",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions(u32);

impl Permissions {
    pub fn of_roles(roles: &[Role]) -> Self {
        let mut set = Permissions::default();
        for role in roles {
            for permission in role.permissions() {
                set.0 |= permission.bit();
            }
        }
        set
    }

    pub fn has(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.has(*p))
            .map(Permission::name)
            .collect()
    }
}

/// A caller's role in its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A loyalty member: its own account, holds and links.
    Member,
    /// Casino or store staff: reads accounts of its tenant, gives comps.
    Staff,
    /// A tenant's system: enrollment, accrual, ingest, holds and links on a member's behalf,
    /// SSO sessions for its users.
    Service,
    /// Reads everything of its tenant, changes nothing.
    Auditor,
    /// A tenant's administrator: dead-letter operations, API keys, endpoints, exports of
    /// the tenant's events.
    Admin,
    /// The server's operator: rebuilds and snapshots of the projections (which hold every
    /// tenant's rows) and every tenant's operations. Not a tenant's role: no session or API
    /// key carries it, only a token made with the server's key ring (`tally token issue`).
    ServerAdmin,
}

/// Roles a service may assert for a user in an SSO session. Service and admin credentials
/// are API keys and operator tokens, which an admin makes; a service cannot mint them.
pub const SESSION_ROLES: [Role; 3] = [Role::Member, Role::Staff, Role::Auditor];

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Member,
        Role::Staff,
        Role::Service,
        Role::Auditor,
        Role::Admin,
        Role::ServerAdmin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Staff => "staff",
            Role::Service => "service",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::ServerAdmin => "server-admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Member => &[
                AccountsReadOwn,
                PointsHoldOwn,
                LinksWriteOwn,
                LinksReadOwn,
                SessionsSelf,
            ],
            Role::Staff => &[AccountsRead, LoyaltyAward, LinksRead, SessionsSelf],
            Role::Service => &[
                AccountsOpen,
                AccountsRead,
                LoyaltyAccrue,
                PointsHold,
                IngestWrite,
                IngestRead,
                LinksWrite,
                LinksRead,
                SessionsIssue,
                SessionsSelf,
                DeliveriesAck,
            ],
            Role::Auditor => &[
                AccountsRead,
                AuditRead,
                IngestRead,
                OperationsRead,
                LinksRead,
                SessionsSelf,
                DeliveriesRead,
            ],
            Role::Admin => &[
                IngestRead,
                DeadLettersManage,
                OperationsRead,
                OperationsRun,
                KeysManage,
                SessionsSelf,
                DeliveriesManage,
                DeliveriesRead,
            ],
            Role::ServerAdmin => &[OperationsRead, OperationsRun, ServerManage, SessionsSelf],
        }
    }
}
