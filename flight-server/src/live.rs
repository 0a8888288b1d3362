//! `DoExchange` live queries (DESIGN §7): decode `CommandSubscribe`, subscribe, then stream
//! schema → SNAPSHOT batches → CURRENT → CHANGES / PROGRESS, each message carrying a
//! `SubscriptionEvent` in `app_metadata`.
//!
//! The client keeps its half of the call open; half-closing it (or cancelling the call) ends the
//! subscription. The stream ends with `CANCELLED` on `KILL LIVE QUERY`, `ABORTED` when the table
//! is dropped, `RESOURCE_EXHAUSTED` (with the last delivered seq) when the client fell too far
//! behind, and `UNAUTHENTICATED` when its token expires or its user is dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions};
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt};
use kalam_core::auth::Authenticator;
use kalam_core::context::ExecutionContext;
use kalam_core::engine::{Engine, Subscribed};
use kalam_core::live::LiveEnd;
use kalam_core::live::SubscriptionHandle;
use kalam_proto::subscription_event::Kind;
use kalam_proto::{COMMAND_SUBSCRIBE_TYPE_URL, CommandSubscribe, SubscriptionEvent};
use prost::Message;
use tonic::{Status, Streaming};

use crate::status::to_status;

/// Default idle heartbeat (PROGRESS) period.
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(5000);
/// Shortest heartbeat a client may ask for.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// Default rows per batch.
const DEFAULT_BATCH_ROWS: usize = 8192;

/// A live-query response stream.
pub(crate) type LiveStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send>>;

/// Reads the command from the first client message.
pub(crate) async fn read_command(
    input: &mut Streaming<FlightData>,
) -> Result<CommandSubscribe, Status> {
    let first = input
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("DoExchange: the client sent no message"))?;
    let descriptor = first.flight_descriptor.ok_or_else(|| {
        Status::invalid_argument("DoExchange: the first message must carry a FlightDescriptor")
    })?;
    let any = arrow_flight::sql::Any::decode(descriptor.cmd.clone())
        .map_err(|e| Status::invalid_argument(format!("DoExchange: command is not an Any: {e}")))?;
    if any.type_url != COMMAND_SUBSCRIBE_TYPE_URL {
        return Err(Status::invalid_argument(format!(
            "DoExchange: unknown command '{}' (expected {COMMAND_SUBSCRIBE_TYPE_URL})",
            any.type_url
        )));
    }
    CommandSubscribe::decode(any.value)
        .map_err(|e| Status::invalid_argument(format!("malformed CommandSubscribe: {e}")))
}

fn event(kind: Kind, seq: u64, id: &str) -> Bytes {
    SubscriptionEvent::new(kind, seq, id).encode_to_vec().into()
}

struct Encoder {
    ipc: IpcDataGenerator,
    dicts: DictionaryTracker,
    opts: IpcWriteOptions,
}

impl Encoder {
    fn new() -> Self {
        Self {
            ipc: IpcDataGenerator::default(),
            dicts: DictionaryTracker::new(false),
            opts: IpcWriteOptions::default(),
        }
    }

    fn schema(&self, schema: &SchemaRef, meta: Bytes) -> FlightData {
        FlightData::from(SchemaAsIpc::new(schema, &self.opts)).with_app_metadata(meta)
    }

    fn batch(&mut self, batch: &RecordBatch, meta: Bytes) -> Result<FlightData, Status> {
        let (_, data) = self
            .ipc
            .encode(batch, &mut self.dicts, &self.opts, &mut Default::default())
            .map_err(|e| Status::internal(format!("encoding a live batch: {e}")))?;
        Ok(FlightData::from(data).with_app_metadata(meta))
    }
}

/// Everything a live stream needs besides the subscription.
pub(crate) struct LiveCall {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    pub exec: Arc<ExecutionContext>,
    /// The bearer token, re-verified at each heartbeat (expiry, dropped user).
    pub token: Option<String>,
    /// Identifies the client connection (per-connection limit).
    pub connection: String,
}

/// Subscribes and returns the response stream.
pub(crate) async fn open(
    call: LiveCall,
    cmd: CommandSubscribe,
    input: Streaming<FlightData>,
) -> Result<LiveStream, Status> {
    let status = |e| to_status(e, &call.exec.request_id);
    let sub = call
        .engine
        .subscribe(
            &call.exec,
            &call.connection,
            &cmd.sql,
            cmd.snapshot,
            cmd.resume_after_seq,
        )
        .await
        .map_err(status)?;
    let heartbeat = match cmd.heartbeat_ms {
        0 => DEFAULT_HEARTBEAT,
        ms => Duration::from_millis(u64::from(ms)).max(MIN_HEARTBEAT),
    };
    let batch_rows = match cmd.max_batch_rows {
        0 => DEFAULT_BATCH_ROWS,
        n => n as usize,
    };
    let Subscribed {
        handle,
        schema,
        snapshot,
        snapshot_seq,
    } = sub;
    let live = Live {
        id: handle.sub.id.to_string(),
        call,
        handle,
        input,
        heartbeat,
        batch_rows,
        enc: Encoder::new(),
        phase: Phase::Schema(schema),
        snapshot,
        snapshot_seq,
        delivered: snapshot_seq,
        pending: VecDeque::new(),
    };
    // The response stream is the subscription: no task or channel of its own, so an idle
    // subscription costs its registry record, this state and the HTTP/2 stream. gRPC polls it
    // when the client has window; until then changes wait in the subscription's bounded queue.
    Ok(Box::pin(futures::stream::unfold(
        live,
        |mut live| async move { live.next().await.map(|m| (m, live)) },
    )))
}

/// Where a live stream is.
enum Phase {
    /// The schema message is next.
    Schema(SchemaRef),
    /// Snapshot batches, then CURRENT.
    Snapshot,
    /// Changes and heartbeats.
    Live,
    /// Ended (an error status was sent, or the client went away).
    Done,
}

/// The state of one live stream.
struct Live {
    call: LiveCall,
    /// The registration; dropping it (with the stream) unsubscribes.
    handle: SubscriptionHandle,
    /// The client's half of the call: its end unsubscribes.
    input: Streaming<FlightData>,
    id: String,
    heartbeat: Duration,
    batch_rows: usize,
    enc: Encoder,
    phase: Phase,
    snapshot: Option<SendableRecordBatchStream>,
    snapshot_seq: u64,
    /// Highest seq delivered (for PROGRESS and the lag message).
    delivered: u64,
    /// Encoded slices of a batch bigger than `batch_rows`, sent one per poll (at most
    /// `ceil(rows / batch_rows)` of one delivery).
    pending: VecDeque<FlightData>,
}

impl Live {
    /// The next message, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Result<FlightData, Status>> {
        if let Some(m) = self.pending.pop_front() {
            return Some(Ok(m));
        }
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Schema(schema) => {
                self.phase = Phase::Snapshot;
                let meta = event(Kind::Unspecified, 0, &self.id);
                Some(Ok(self.enc.schema(&schema, meta)))
            }
            Phase::Snapshot => self.snapshot_next().await,
            Phase::Live => self.live_next().await,
            Phase::Done => None,
        }
    }

    async fn snapshot_next(&mut self) -> Option<Result<FlightData, Status>> {
        let seq = self.snapshot_seq;
        if let Some(rows) = &mut self.snapshot {
            match rows.next().await {
                Some(Ok(b)) => {
                    self.phase = Phase::Snapshot;
                    return Some(self.encode(&b, Kind::Snapshot, seq));
                }
                Some(Err(e)) => return Some(Err(kalam_server_status(e, &self.call))),
                None => self.snapshot = None,
            }
        }
        self.phase = Phase::Live;
        Some(Ok(FlightData::new().with_app_metadata(event(
            Kind::Current,
            seq,
            &self.id,
        ))))
    }

    async fn live_next(&mut self) -> Option<Result<FlightData, Status>> {
        loop {
            tokio::select! {
                d = self.handle.rx.recv() => {
                    let d = d?;
                    self.handle.delivered(&d);
                    self.delivered = self.delivered.max(d.max_seq);
                    self.phase = Phase::Live;
                    return Some(self.encode(&d.batch, Kind::Changes, d.max_seq));
                }
                () = self.handle.sub.ended_notify.notified() => {
                    let why = self.handle.sub.end_reason();
                    return Some(Err(end_status(why, self.delivered)));
                }
                m = self.input.next() => match m {
                    // Nothing is expected from the client after the command; ignore it.
                    Some(Ok(_)) => continue,
                    // Half-close or a broken call: unsubscribe.
                    None | Some(Err(_)) => return None,
                },
                () = tokio::time::sleep(self.heartbeat) => {
                    if let Some(token) = &self.call.token
                        && let Err(e) = self.call.auth.verify_token(token)
                    {
                        return Some(Err(Status::unauthenticated(format!("live query ended: {e}"))));
                    }
                    self.phase = Phase::Live;
                    let meta = event(Kind::Progress, self.delivered, &self.id);
                    return Some(Ok(FlightData::new().with_app_metadata(meta)));
                }
            }
        }
    }

    /// Encodes `b` as one message per `batch_rows` rows: returns the first, queues the rest.
    fn encode(&mut self, b: &RecordBatch, kind: Kind, seq: u64) -> Result<FlightData, Status> {
        let rows = self.batch_rows;
        if b.num_rows() <= rows {
            return self.enc.batch(b, event(kind, seq, &self.id));
        }
        for offset in (0..b.num_rows()).step_by(rows) {
            let chunk = b.slice(offset, rows.min(b.num_rows() - offset));
            let m = self.enc.batch(&chunk, event(kind, seq, &self.id))?;
            self.pending.push_back(m);
        }
        self.pending
            .pop_front()
            .ok_or_else(|| Status::internal("empty live batch"))
    }
}

fn kalam_server_status(e: datafusion::error::DataFusionError, call: &LiveCall) -> Status {
    to_status(kalam_core::Error::from_datafusion(e), &call.exec.request_id)
}

fn end_status(why: Option<LiveEnd>, delivered: u64) -> Status {
    match why {
        Some(LiveEnd::Killed) => Status::cancelled("live query killed (KILL LIVE QUERY)"),
        Some(LiveEnd::TableDropped) => Status::aborted("live query ended: its table was dropped"),
        Some(LiveEnd::Lagged { last_seq }) => Status::resource_exhausted(format!(
            "live query ended: the client fell too far behind; last delivered seq {}; \
             resubscribe with resume_after_seq={}",
            last_seq.max(delivered),
            last_seq.max(delivered)
        )),
        None => Status::internal("live query ended"),
    }
}
