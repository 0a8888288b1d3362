//! [`KalamClient`]: one connection to a KalamFlight server and the calls made over it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate, DoPutUpdateResult,
    ProstMessageExt,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightData,
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, IpcMessage, PutResult,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use prost::Message;
use tonic::Request;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::auth::{self, AUTHORIZATION};
use crate::endpoint::{ConnectOptions, parse_url};
use crate::error::{Error, Result};
use crate::ingest::IngestMode;
use crate::prepared::PreparedStatement;
use crate::stream::{FlightDataStream, RecordBatchStream, halt_on_error};

/// Largest gRPC message accepted or sent (DESIGN §6: the server accepts ≥ 64 MiB).
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How long [`KalamClient::connect`] waits for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Flight action names (not exported by `arrow-flight`).
pub(crate) const CREATE_PREPARED_STATEMENT: &str = "CreatePreparedStatement";
pub(crate) const CLOSE_PREPARED_STATEMENT: &str = "ClosePreparedStatement";
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";

/// A connection to a KalamFlight server, speaking Flight SQL.
///
/// Cloning is cheap and clones share the HTTP/2 connection and the bearer token; every call
/// takes `&self`, so clones (or one client) can run calls concurrently.
#[derive(Clone)]
pub struct KalamClient {
    /// Generated Flight client over the shared channel; each call clones it (cheap).
    flight: FlightServiceClient<Channel>,
    /// Bearer token sent as `authorization` on every call except the handshake.
    token: Option<Token>,
}

/// A bearer token and its pre-built header, validated once when it is set.
#[derive(Clone)]
struct Token {
    /// The token as the server issued it.
    raw: Arc<str>,
    /// `Bearer <raw>`.
    header: AsciiMetadataValue,
}

impl KalamClient {
    /// Connects to `url` without logging in: `grpc://host:port` (or `http://`) for plaintext,
    /// `grpc+tls://host:port` (or `https://`) for TLS verified against the system's trusted
    /// roots. To trust a private CA, use [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// Like [`connect`](Self::connect), with TLS options (a CA certificate to trust, the name
    /// to verify). TLS options on a plaintext URL are refused with [`Error::InvalidTls`].
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Self> {
        let target = parse_url(url)?;
        let connect_error = |source| Error::Connect {
            url: url.to_owned(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(target.uri)
            .map_err(connect_error)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if target.tls {
            let mut tls = ClientTlsConfig::new();
            tls = match &options.ca_certificate_pem {
                Some(pem) => {
                    if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
                        return Err(Error::InvalidTls {
                            url: url.to_owned(),
                            reason: "the CA certificate is not a PEM certificate".into(),
                        });
                    }
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_native_roots(),
            };
            if let Some(name) = &options.tls_domain_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(connect_error)?;
        } else if options.is_tls() {
            return Err(Error::InvalidTls {
                url: url.to_owned(),
                reason: "TLS options need a grpc+tls:// or https:// URL".into(),
            });
        }
        let channel = endpoint.connect().await.map_err(connect_error)?;
        Ok(Self::from_channel(channel))
    }

    /// Wraps an already configured tonic channel (e.g. one set up with TLS by the caller).
    pub fn from_channel(channel: Channel) -> Self {
        let flight = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Self {
            flight,
            token: None,
        }
    }

    /// Logs in with a Flight `Handshake` carrying `authorization: Basic …` and keeps the
    /// bearer token the server returns (in the response headers, or else the trailers).
    ///
    /// Wrong credentials fail with [`Error::Status`] `UNAUTHENTICATED`; the previous token, if
    /// any, is kept.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<()> {
        // One empty HandshakeRequest, as arrow-rs clients send; ADBC sends none, and the
        // server accepts both.
        let mut request = Request::new(stream::iter([HandshakeRequest::default()]));
        request
            .metadata_mut()
            .insert(AUTHORIZATION, auth::basic_header(user, password)?);
        let response = self.flight.clone().handshake(request).await?;
        let mut token = auth::bearer_from_metadata(response.metadata())?;
        let mut messages = response.into_inner();
        while messages.message().await?.is_some() {}
        if token.is_none()
            && let Some(trailers) = messages.trailers().await?
        {
            token = auth::bearer_from_metadata(&trailers)?;
        }
        let token = token.ok_or_else(|| {
            Error::protocol("handshake succeeded without an `authorization: Bearer` header")
        })?;
        self.token = Some(Token::new(token)?);
        Ok(())
    }

    /// Uses `token` (from an earlier [`login`](Self::login)) instead of logging in.
    pub fn with_bearer_token(mut self, token: impl Into<String>) -> Result<Self> {
        self.token = Some(Token::new(token.into())?);
        Ok(self)
    }

    /// The bearer token sent with every call, if logged in.
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|token| &*token.raw)
    }

    /// Runs a query and streams its result batches as they arrive.
    ///
    /// Statements of any kind may be sent this way; the server runs them at `DoGet`.
    pub async fn query(&self, sql: &str) -> Result<RecordBatchStream> {
        let info = self.query_info(sql).await?;
        self.fetch(info)
    }

    /// Runs a query and collects every batch. Meant for tests and small results.
    pub async fn query_collect(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.query(sql).await?.try_collect().await
    }

    /// The schema a query would return, without running it (`GetFlightInfo` only).
    pub async fn query_schema(&self, sql: &str) -> Result<SchemaRef> {
        let info = self.query_info(sql).await?;
        decode_schema(&info.schema)?
            .ok_or_else(|| Error::protocol("FlightInfo for the query carries no schema"))
    }

    /// `GetFlightInfo` for a query: the first half of [`query`](Self::query). Pass the result
    /// to [`fetch`](Self::fetch) to read it, or to [`cancel`](Self::cancel).
    pub async fn query_info(&self, sql: &str) -> Result<FlightInfo> {
        let command = CommandStatementQuery {
            query: sql.to_owned(),
            transaction_id: None,
        };
        self.get_flight_info(&command).await
    }

    /// Streams the data of every endpoint of `info` (`DoGet` on each ticket, in order).
    ///
    /// Endpoint locations are ignored: every ticket is redeemed on this connection.
    pub fn fetch(&self, info: FlightInfo) -> Result<RecordBatchStream> {
        let schema = decode_schema(&info.schema)?;
        let client = self.clone();
        let batches = stream::iter(info.endpoint)
            .then(move |endpoint| {
                let client = client.clone();
                async move { client.do_get(endpoint).await }
            })
            .try_flatten()
            .boxed();
        Ok(RecordBatchStream::new(schema, batches))
    }

    /// Asks the server to stop the query behind `info` (`CancelFlightInfo` action).
    pub async fn cancel(&self, info: &FlightInfo) -> Result<CancelStatus> {
        let request = CancelFlightInfoRequest::new(info.clone());
        let body = self
            .do_action(CANCEL_FLIGHT_INFO, request.encode_to_vec())
            .await?
            .ok_or_else(|| Error::protocol("CancelFlightInfo returned no result"))?;
        let result = CancelFlightInfoResult::decode(body)
            .map_err(Error::decode("CancelFlightInfoResult"))?;
        Ok(result.status())
    }

    /// Runs a statement that returns no rows (DDL, DML) and returns the affected row count.
    pub async fn execute(&self, sql: &str) -> Result<i64> {
        let command = CommandStatementUpdate {
            query: sql.to_owned(),
            transaction_id: None,
        };
        let result = self.do_put(descriptor_only(&command)).await?;
        update_count(result)
    }

    /// Prepares a statement (`CreatePreparedStatement` action).
    ///
    /// Close it with [`PreparedStatement::close`]; one that is just dropped stays on the
    /// server until it expires.
    pub async fn prepare(&self, sql: &str) -> Result<PreparedStatement> {
        let request = ActionCreatePreparedStatementRequest {
            query: sql.to_owned(),
            transaction_id: None,
        };
        let body = self
            .do_action(CREATE_PREPARED_STATEMENT, request.as_any().encode_to_vec())
            .await?
            .ok_or_else(|| Error::protocol("CreatePreparedStatement returned no result"))?;
        let result: ActionCreatePreparedStatementResult = Any::decode(body)
            .map_err(Error::decode("ActionCreatePreparedStatementResult"))?
            .unpack()?
            .ok_or_else(|| {
                Error::protocol(
                    "CreatePreparedStatement result is not an ActionCreatePreparedStatementResult",
                )
            })?;
        Ok(PreparedStatement::new(
            self.clone(),
            result.prepared_statement_handle,
            decode_schema(&result.dataset_schema)?.unwrap_or_else(empty_schema),
            decode_schema(&result.parameter_schema)?.unwrap_or_else(empty_schema),
        ))
    }

    /// Bulk-loads `batches` into `schema_name.table` (or `table` in the default schema) in
    /// one atomic `CommandStatementIngest` and returns the number of rows written.
    ///
    /// The table schema is taken from the first batch, so `batches` must not be empty.
    pub async fn ingest(
        &self,
        table: &str,
        schema_name: Option<&str>,
        mode: IngestMode,
        batches: Vec<RecordBatch>,
    ) -> Result<i64> {
        let schema = batches.first().map(RecordBatch::schema).ok_or_else(|| {
            Error::InvalidArgument("ingest needs at least one record batch".into())
        })?;
        let batches = stream::iter(batches.into_iter().map(Ok));
        self.ingest_stream(table, schema_name, mode, schema, batches)
            .await
    }

    /// Like [`ingest`](Self::ingest), but streams `batches` to the server as they are
    /// produced. If `batches` yields an error, the call is aborted, nothing is committed, and
    /// that error is returned.
    pub async fn ingest_stream<S>(
        &self,
        table: &str,
        schema_name: Option<&str>,
        mode: IngestMode,
        schema: SchemaRef,
        batches: S,
    ) -> Result<i64>
    where
        S: Stream<Item = Result<RecordBatch>> + Send + 'static,
    {
        let command = CommandStatementIngest {
            table_definition_options: Some(mode.table_definition_options()),
            table: table.to_owned(),
            schema: schema_name.map(str::to_owned),
            ..Default::default()
        };
        let batches = batches.map_err(|error| FlightError::ExternalError(Box::new(error)));
        let result = self
            .do_put(encode_batches(&command, schema, batches))
            .await?;
        update_count(result)
    }

    /// `GetFlightInfo` for a Flight SQL command.
    pub(crate) async fn get_flight_info(
        &self,
        command: &impl ProstMessageExt,
    ) -> Result<FlightInfo> {
        let request = self.request(descriptor(command));
        Ok(self
            .flight
            .clone()
            .get_flight_info(request)
            .await?
            .into_inner())
    }

    /// `DoGet` on one endpoint's ticket, decoded into record batches.
    async fn do_get(
        &self,
        endpoint: FlightEndpoint,
    ) -> Result<impl Stream<Item = Result<RecordBatch>> + Send + 'static + use<>> {
        let ticket = endpoint
            .ticket
            .ok_or_else(|| Error::protocol("FlightInfo endpoint has no ticket"))?;
        let data = self
            .flight
            .clone()
            .do_get(self.request(ticket))
            .await?
            .into_inner()
            .map_err(FlightError::from);
        Ok(
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
                .map_err(Error::from),
        )
    }

    /// `DoPut` of `data`; returns the first `PutResult` once the server has finished the call.
    ///
    /// If `data` fails, the call is dropped (the server sees a cancelled stream, not a short
    /// one) and that error is returned.
    pub(crate) async fn do_put(&self, data: FlightDataStream) -> Result<Option<PutResult>> {
        let (data, input_error) = halt_on_error(data);
        let request = self.request(data);
        let mut flight = self.flight.clone();
        let call = async move {
            let mut results = flight.do_put(request).await?.into_inner();
            let first = results.message().await?;
            // Drain to the end so a status sent after the result is not lost.
            while results.message().await?.is_some() {}
            Ok(first)
        };
        tokio::select! {
            biased;
            error = input_error => Err(error),
            result = call => result,
        }
    }

    /// `DoAction`; returns the body of the first result after the server finished the call.
    pub(crate) async fn do_action(&self, kind: &str, body: Vec<u8>) -> Result<Option<Bytes>> {
        let action = Action::new(kind, body);
        let mut results = self
            .flight
            .clone()
            .do_action(self.request(action))
            .await?
            .into_inner();
        let first = results.message().await?.map(|result| result.body);
        while results.message().await?.is_some() {}
        Ok(first)
    }

    /// A request carrying the bearer token, if any.
    /// The generated Flight client (for calls implemented in other modules).
    pub(crate) fn flight_client(&self) -> FlightServiceClient<Channel> {
        self.flight.clone()
    }

    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(AUTHORIZATION, token.header.clone());
        }
        request
    }
}

impl fmt::Debug for KalamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("KalamClient")
            .field("logged_in", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl Token {
    fn new(raw: String) -> Result<Self> {
        let header = auth::bearer_header(&raw)?;
        Ok(Self {
            raw: raw.into(),
            header,
        })
    }
}

/// A `FlightDescriptor` whose `cmd` is `command` packed in a protobuf `Any`.
pub(crate) fn descriptor(command: &impl ProstMessageExt) -> FlightDescriptor {
    FlightDescriptor::new_cmd(command.as_any().encode_to_vec())
}

/// A DoPut body of one message that only carries the command.
pub(crate) fn descriptor_only(command: &impl ProstMessageExt) -> FlightDataStream {
    let data = FlightData::new().with_descriptor(descriptor(command));
    stream::once(async move { Ok(data) }).boxed()
}

/// A DoPut body: the command on the schema message (sent even if `batches` is empty), then
/// the batches, split to the encoder's default message size.
pub(crate) fn encode_batches<S>(
    command: &impl ProstMessageExt,
    schema: SchemaRef,
    batches: S,
) -> FlightDataStream
where
    S: Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
{
    FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor(command)))
        .with_schema(schema)
        .build(batches)
        .boxed()
}

/// The record count of the `DoPutUpdateResult` in a DoPut's first result.
pub(crate) fn update_count(result: Option<PutResult>) -> Result<i64> {
    let result = result.ok_or_else(|| Error::protocol("DoPut returned no DoPutUpdateResult"))?;
    let update = DoPutUpdateResult::decode(result.app_metadata)
        .map_err(Error::decode("DoPutUpdateResult"))?;
    Ok(update.record_count)
}

/// An IPC-encoded schema from the server; `None` when it sent no bytes.
fn decode_schema(ipc: &Bytes) -> Result<Option<SchemaRef>> {
    if ipc.is_empty() {
        return Ok(None);
    }
    let schema = Schema::try_from(IpcMessage(ipc.clone()))?;
    Ok(Some(Arc::new(schema)))
}

fn empty_schema() -> SchemaRef {
    Arc::new(Schema::empty())
}
