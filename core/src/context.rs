//! Who is asking: the per-request identity every plan carries.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Roles, ordered by power: `User < Service < Dba < System`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Own rows of USER/STREAM tables, PUBLIC shared tables read-only.
    User,
    /// As `User`, plus writes to shared tables and `EXECUTE AS USER`.
    Service,
    /// DDL, user management, every system table.
    Dba,
    /// The bootstrap `root` account.
    System,
}

impl Role {
    /// Parses `user|service|dba|system` (case-insensitive).
    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            "user" => Some(Role::User),
            "service" => Some(Role::Service),
            "dba" => Some(Role::Dba),
            "system" => Some(Role::System),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Service => "service",
            Role::Dba => "dba",
            Role::System => "system",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a request runs under. Built by the server from a verified token, never from
/// anything the client says about itself; the role is read from the catalog on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionContext {
    /// Stable user id (the partition key of the user's rows).
    pub user_id: Arc<str>,
    /// Login name, for messages and system tables.
    pub user_name: Arc<str>,
    /// Role as of this request.
    pub role: Role,
    /// Correlates logs of one RPC.
    pub request_id: Arc<str>,
}

impl ExecutionContext {
    /// True when the caller has at least `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.role >= role
    }
}
