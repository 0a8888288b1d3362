//! `DoExchange` live queries (DESIGN §7): decode `CommandSubscribe`, subscribe, then stream
//! schema → SNAPSHOT batches → CURRENT → CHANGES / PROGRESS, each message carrying a
//! `SubscriptionEvent` in `app_metadata`.
//!
//! The client keeps its half of the call open; half-closing it (or cancelling the call) ends the
//! subscription. The stream ends with `CANCELLED` on `KILL LIVE QUERY`, `ABORTED` when the table
//! is dropped, `RESOURCE_EXHAUSTED` (with the last delivered seq) when the client fell too far
//! behind, and `UNAUTHENTICATED` when its token expires or its user is dropped.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions};
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use kalam_core::auth::Authenticator;
use kalam_core::context::ExecutionContext;
use kalam_core::engine::{Engine, Subscribed};
use kalam_core::live::LiveEnd;
use kalam_proto::subscription_event::Kind;
use kalam_proto::{COMMAND_SUBSCRIBE_TYPE_URL, CommandSubscribe, SubscriptionEvent};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::status::to_status;

/// Default idle heartbeat (PROGRESS) period.
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(5000);
/// Shortest heartbeat a client may ask for.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// Default rows per batch.
const DEFAULT_BATCH_ROWS: usize = 8192;
/// Encoded messages buffered between the subscription task and gRPC (backpressure beyond it).
const OUTBOUND_MESSAGES: usize = 4;

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
    mut input: Streaming<FlightData>,
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
    let (tx, rx) = mpsc::channel(OUTBOUND_MESSAGES);
    // Client half-close ends the subscription.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        while let Ok(Some(_)) = input.message().await {}
        let _ = closed_tx.send(());
    });
    tokio::spawn(run(call, sub, heartbeat, batch_rows, tx, closed_rx));
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    })))
}

async fn run(
    call: LiveCall,
    sub: Subscribed,
    heartbeat: Duration,
    batch_rows: usize,
    tx: mpsc::Sender<Result<FlightData, Status>>,
    mut closed: tokio::sync::oneshot::Receiver<()>,
) {
    let Subscribed {
        mut handle,
        schema,
        snapshot,
        snapshot_seq,
    } = sub;
    let id = handle.sub.id.to_string();
    let mut enc = Encoder::new();
    macro_rules! send {
        ($m:expr) => {
            if tx.send($m).await.is_err() {
                return; // the client went away: dropping `handle` unsubscribes
            }
        };
    }
    send!(Ok(enc.schema(&schema, event(Kind::Unspecified, 0, &id))));
    if let Some(mut rows) = snapshot {
        while let Some(b) = rows.next().await {
            match b {
                Ok(b) => {
                    for chunk in slices(&b, batch_rows) {
                        send!(enc.batch(&chunk, event(Kind::Snapshot, snapshot_seq, &id)));
                    }
                }
                Err(e) => {
                    send!(Err(kalam_server_status(e, &call)));
                    return;
                }
            }
        }
    }
    send!(Ok(FlightData::new().with_app_metadata(event(
        Kind::Current,
        snapshot_seq,
        &id
    ))));
    let mut delivered = snapshot_seq;
    loop {
        tokio::select! {
            d = handle.rx.recv() => {
                let Some(d) = d else { return };
                handle.delivered(&d);
                delivered = delivered.max(d.max_seq);
                for chunk in slices(&d.batch, batch_rows) {
                    send!(enc.batch(&chunk, event(Kind::Changes, d.max_seq, &id)));
                }
            }
            () = handle.sub.ended_notify.notified() => {
                let why = handle.sub.end_reason();
                send!(Err(end_status(why, delivered)));
                return;
            }
            _ = &mut closed => return,
            () = tokio::time::sleep(heartbeat) => {
                if let Some(token) = &call.token
                    && let Err(e) = call.auth.verify_token(token)
                {
                    send!(Err(Status::unauthenticated(format!("live query ended: {e}"))));
                    return;
                }
                send!(Ok(FlightData::new().with_app_metadata(event(Kind::Progress, delivered, &id))));
            }
        }
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

fn slices(b: &RecordBatch, rows: usize) -> Vec<RecordBatch> {
    if b.num_rows() <= rows {
        return vec![b.clone()];
    }
    (0..b.num_rows())
        .step_by(rows)
        .map(|o| b.slice(o, rows.min(b.num_rows() - o)))
        .collect()
}
