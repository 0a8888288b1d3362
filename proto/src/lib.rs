//! `kalam-proto`: the live-query messages of `kalam.proto` (DESIGN §7), as prost types.
//!
//! The types are written with `prost` derives rather than generated at build time, so building
//! needs no `protoc`. The test below parses `kalam.proto` and checks that every field (name,
//! number, type) matches the Rust types, so the two cannot drift apart.

/// Type URL of [`CommandSubscribe`] inside a `google.protobuf.Any`.
pub const COMMAND_SUBSCRIBE_TYPE_URL: &str = "type.googleapis.com/kalam.v1.CommandSubscribe";

/// Opens a live query (first `FlightDescriptor.cmd` of a `DoExchange`, wrapped in `Any`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CommandSubscribe {
    /// `SELECT cols FROM ns.t [WHERE …]` (one table).
    #[prost(string, tag = "1")]
    pub sql: String,
    /// Send the current matching rows first.
    #[prost(bool, tag = "2")]
    pub snapshot: bool,
    /// Deliver every change with `_seq` greater than this, then go live.
    #[prost(uint64, optional, tag = "3")]
    pub resume_after_seq: Option<u64>,
    /// Rows per batch; 0 = server default.
    #[prost(uint32, tag = "4")]
    pub max_batch_rows: u32,
    /// Idle heartbeat period in ms; 0 = server default (5000).
    #[prost(uint32, tag = "5")]
    pub heartbeat_ms: u32,
}

/// `FlightData.app_metadata` of every server message of a live query.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SubscriptionEvent {
    /// What the message is.
    #[prost(enumeration = "subscription_event::Kind", tag = "1")]
    pub kind: i32,
    /// SNAPSHOT/CURRENT: snapshot seq; CHANGES: max `_seq` in the batch; PROGRESS: every change
    /// up to it has been delivered.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// Server-assigned id (also in `system.live_queries`, used by `KILL LIVE QUERY`).
    #[prost(string, tag = "3")]
    pub subscription_id: String,
}

/// Nested types of [`SubscriptionEvent`].
pub mod subscription_event {
    /// Kinds of server messages.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Kind {
        /// The schema message.
        Unspecified = 0,
        /// A batch of the snapshot.
        Snapshot = 1,
        /// Metadata only: the snapshot is complete; live changes follow.
        Current = 2,
        /// A batch of changes.
        Changes = 3,
        /// Metadata only: heartbeat while idle.
        Progress = 4,
    }
}

impl SubscriptionEvent {
    /// An event of `kind`.
    pub fn new(kind: subscription_event::Kind, seq: u64, subscription_id: &str) -> Self {
        Self {
            kind: kind as i32,
            seq,
            subscription_id: subscription_id.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// (message, field, number, proto type) as declared in `kalam.proto`.
    fn declared_fields() -> Vec<(String, String, u32, String)> {
        let text = include_str!("../kalam.proto");
        let mut out = Vec::new();
        let mut message = String::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("").trim();
            if let Some(rest) = code.strip_prefix("message ") {
                message = rest.trim_end_matches('{').trim().to_string();
                continue;
            }
            let Some((lhs, rhs)) = code.split_once('=') else {
                continue;
            };
            if code.starts_with("enum") || code.starts_with("syntax") {
                continue;
            }
            let words: Vec<&str> = lhs.split_whitespace().collect();
            let number: u32 = rhs.trim().trim_end_matches(';').trim().parse().unwrap();
            let (ty, name) = match words.as_slice() {
                ["optional", ty, name] => (format!("optional {ty}"), name.to_string()),
                [ty, name] => (ty.to_string(), name.to_string()),
                _ => continue,
            };
            out.push((message.clone(), name, number, ty));
        }
        out
    }

    #[test]
    fn proto_file_matches_the_rust_types() {
        let expected = [
            ("CommandSubscribe", "sql", 1, "string"),
            ("CommandSubscribe", "snapshot", 2, "bool"),
            ("CommandSubscribe", "resume_after_seq", 3, "optional uint64"),
            ("CommandSubscribe", "max_batch_rows", 4, "uint32"),
            ("CommandSubscribe", "heartbeat_ms", 5, "uint32"),
            ("SubscriptionEvent", "kind", 1, "Kind"),
            ("SubscriptionEvent", "seq", 2, "uint64"),
            ("SubscriptionEvent", "subscription_id", 3, "string"),
        ];
        let declared = declared_fields();
        let want: Vec<(String, String, u32, String)> = expected
            .iter()
            .map(|(m, f, n, t)| (m.to_string(), f.to_string(), *n, t.to_string()))
            .collect();
        assert_eq!(declared, want, "kalam.proto and src/lib.rs disagree");
        // The Rust types encode those numbers and wire types.
        let cmd = CommandSubscribe {
            sql: "s".into(),
            snapshot: true,
            resume_after_seq: Some(0),
            max_batch_rows: 7,
            heartbeat_ms: 9,
        };
        assert_eq!(
            cmd.encode_to_vec(),
            vec![0x0a, 1, b's', 0x10, 1, 0x18, 0, 0x20, 7, 0x28, 9],
            "optional fields are sent even when zero"
        );
        let ev = SubscriptionEvent::new(subscription_event::Kind::Changes, 5, "x");
        assert_eq!(ev.encode_to_vec(), vec![0x08, 3, 0x10, 5, 0x1a, 1, b'x']);
        assert_eq!(
            SubscriptionEvent::decode(&ev.encode_to_vec()[..]).unwrap(),
            ev
        );
    }
}
