//! How a caller was recognised, as the audit trail records it.

use chrono::NaiveDateTime;

use super::text_enum;

text_enum! {
    /// How a call's caller was recognised.
    pub enum AuthMethod ("auth method") {
        /// A token created with TokenService.
        ApiToken = "api_token",
        /// A token from the configuration (`tokens`).
        ConfigToken = "config_token",
        /// A client certificate matched by a `tls_client_roles` rule.
        Certificate = "certificate",
        /// A loopback peer, trusted when no credentials are configured.
        Loopback = "loopback",
        /// Nobody was recognised (a denied call).
        None = "none",
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Sequence (assigned when stored; 0 before).
    pub id: i64,
    /// When the call ended (the database's time).
    pub occurred_at: NaiveDateTime,
    /// The instance that served it.
    pub instance_id: String,
    /// Token name, certificate rule, `loopback`, or `-`.
    pub caller: String,
    /// How the caller was recognised.
    pub auth_method: AuthMethod,
    /// The real client address.
    pub client_addr: Option<String>,
    /// The trusted proxy it came through.
    pub proxy_addr: Option<String>,
    /// `/strata.v1.Service/Method`.
    pub method: String,
    /// `field=value` of the resource fields the method declares ('' when none).
    pub resource: String,
    /// gRPC status code name.
    pub code: String,
    /// The call's request id.
    pub request_id: Option<String>,
}

/// What ListAuditEvents filters on.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exactly this caller.
    pub caller: Option<String>,
    /// Exactly this method.
    pub method: Option<String>,
    /// At or after.
    pub since: Option<NaiveDateTime>,
    /// Before.
    pub until: Option<NaiveDateTime>,
}
