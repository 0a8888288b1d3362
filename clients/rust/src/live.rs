//! Live queries ([`KalamClient::subscribe`]): a `DoExchange` that streams typed events.

use std::pin::Pin;
use std::task::{Context, Poll};

use arrow::datatypes::Schema;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::Any;
use arrow_flight::utils::flight_data_to_arrow_batch;
use arrow_flight::{FlightData, FlightDescriptor};
use futures::{Stream, StreamExt, stream};
use kalam_proto::subscription_event::Kind;
use kalam_proto::{COMMAND_SUBSCRIBE_TYPE_URL, CommandSubscribe, SubscriptionEvent};
use prost::Message;

use crate::client::KalamClient;
use crate::error::{Error, Result};

/// How to open a live query.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Send the current matching rows first (`EventKind::Snapshot` batches).
    pub snapshot: bool,
    /// Replay every change after this seq (from an earlier subscription), then go live.
    pub resume_after_seq: Option<u64>,
    /// Rows per batch (0: server default).
    pub max_batch_rows: u32,
    /// Idle heartbeat period in ms (0: server default, 5000).
    pub heartbeat_ms: u32,
}

/// What a live-query message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Rows of the snapshot (`_change_type = 'snapshot'`).
    Snapshot,
    /// The snapshot is complete; changes follow. `seq` is the snapshot position.
    Current,
    /// Committed changes (`_change_type` in insert / update / delete).
    Changes,
    /// Heartbeat: every change up to `seq` has been delivered.
    Progress,
}

/// One message of a live query.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// What it is.
    pub kind: EventKind,
    /// See [`EventKind`]; for changes, the highest `_seq` in `batch`.
    pub seq: u64,
    /// The subscription's id (for `KILL LIVE QUERY`).
    pub subscription_id: String,
    /// Rows: projected columns + `_seq` + `_change_type` (snapshot and changes only).
    pub batch: Option<RecordBatch>,
}

/// An open live query: a stream of [`LiveEvent`]s. Dropping it ends the subscription.
pub struct Subscription {
    events: Pin<Box<dyn Stream<Item = Result<LiveEvent>> + Send>>,
    schema: Option<SchemaRef>,
    id: Option<String>,
    /// Dropped with the subscription: ends our half of the call.
    _close: tokio::sync::oneshot::Sender<()>,
}

impl Subscription {
    /// The schema of the batches, once the first message arrived.
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    /// The server-assigned id, once the first message arrived.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

impl Stream for Subscription {
    type Item = Result<LiveEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

fn kind_of(meta: &SubscriptionEvent) -> Result<EventKind> {
    match Kind::try_from(meta.kind) {
        Ok(Kind::Snapshot) => Ok(EventKind::Snapshot),
        Ok(Kind::Current) => Ok(EventKind::Current),
        Ok(Kind::Changes) => Ok(EventKind::Changes),
        Ok(Kind::Progress) => Ok(EventKind::Progress),
        _ => Err(Error::protocol(format!(
            "unexpected live event kind {}",
            meta.kind
        ))),
    }
}

impl KalamClient {
    /// Opens a live query: `SELECT <columns> FROM <table> [WHERE <condition>]`.
    ///
    /// The returned stream yields the snapshot (if asked), one `Current`, then `Changes` and
    /// idle `Progress` events until it is dropped or the server ends it (the error carries the
    /// gRPC status: `CANCELLED` when killed, `ABORTED` when the table is dropped,
    /// `RESOURCE_EXHAUSTED` with the last delivered seq when the client fell behind).
    pub async fn subscribe(&self, sql: &str, options: SubscribeOptions) -> Result<Subscription> {
        let cmd = CommandSubscribe {
            sql: sql.to_owned(),
            snapshot: options.snapshot,
            resume_after_seq: options.resume_after_seq,
            max_batch_rows: options.max_batch_rows,
            heartbeat_ms: options.heartbeat_ms,
        };
        let any = Any {
            type_url: COMMAND_SUBSCRIBE_TYPE_URL.to_string(),
            value: cmd.encode_to_vec().into(),
        };
        let first = FlightData {
            flight_descriptor: Some(FlightDescriptor::new_cmd(any.encode_to_vec())),
            ..Default::default()
        };
        // Our half stays open for the life of the subscription; dropping the subscription
        // half-closes it, which unsubscribes.
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let outgoing = stream::once(async move { first }).chain(
            stream::once(async move {
                let _ = closed.await;
            })
            .filter_map(|()| async { None }),
        );
        let response = self
            .flight_client()
            .do_exchange(self.request(outgoing))
            .await?
            .into_inner();
        let mut response = response;
        // The first message is the schema.
        let first = response
            .next()
            .await
            .ok_or_else(|| Error::protocol("live query ended before its schema"))??;
        let schema: SchemaRef = std::sync::Arc::new(Schema::try_from(&first)?);
        let meta = SubscriptionEvent::decode(first.app_metadata.clone())
            .map_err(Error::decode("SubscriptionEvent"))?;
        let batch_schema = std::sync::Arc::clone(&schema);
        let dictionaries = std::collections::HashMap::new();
        let events = response.map(move |m| {
            let m = m?;
            let meta = SubscriptionEvent::decode(m.app_metadata.clone())
                .map_err(Error::decode("SubscriptionEvent"))?;
            // CURRENT and PROGRESS carry metadata only.
            let batch = if m.data_header.is_empty() {
                None
            } else {
                Some(flight_data_to_arrow_batch(
                    &m,
                    std::sync::Arc::clone(&batch_schema),
                    &dictionaries,
                )?)
            };
            Ok(LiveEvent {
                kind: kind_of(&meta)?,
                seq: meta.seq,
                subscription_id: meta.subscription_id,
                batch,
            })
        });
        let schema = Some(schema);
        Ok(Subscription {
            events: events.boxed(),
            schema,
            id: Some(meta.subscription_id),
            _close: close,
        })
    }
}
