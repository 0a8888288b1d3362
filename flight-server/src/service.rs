//! The Flight SQL service: decode → authenticate → call the engine → encode.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TableExistsOption, TableNotExistOption,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightData,
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use kalam_core::auth::{Authenticator, decode_basic};
use kalam_core::context::ExecutionContext;
use kalam_core::engine::{Described, Engine, IngestMode, Output};
use kalam_core::provider::{CATALOG_NAME, TableView};
use kalam_core::stats::Stats;
use kalam_core::{Error, catalog::SYSTEM_NAMESPACE};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth_layer::{RequestId, TokenUser, new_request_id};
use crate::metadata::{SQL_INFO, XDBC_INFO};
use crate::prepared::PreparedStatements;
use crate::running::RunningQueries;
use crate::status::{datafusion_status, to_status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service. Cheap to share: everything is behind `Arc`.
#[derive(Clone)]
pub struct KalamFlightService {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    prepared: Arc<PreparedStatements>,
    running: Arc<RunningQueries>,
    /// Bounds concurrent password verifications (see [`KalamFlightService::argon2`]).
    argon2_slots: Arc<tokio::sync::Semaphore>,
}

/// Concurrent argon2 verifications (≈19 MiB each).
pub const ARGON2_SLOTS: usize = 2;

/// Authenticated caller plus the request id for error mapping.
struct Caller {
    exec: Arc<ExecutionContext>,
}

impl Caller {
    fn status(&self, e: Error) -> Status {
        to_status(e, &self.exec.request_id)
    }
}

/// The request id the auth layer gave this call (it also names the call's tracing span).
fn request_id_of<T>(req: &Request<T>) -> Arc<str> {
    match req.extensions().get::<RequestId>() {
        Some(RequestId(id)) => Arc::clone(id),
        None => new_request_id(),
    }
}

/// Statement tickets carry the owner's user id and the SQL; nothing is held server-side, so a
/// client that never calls DoGet costs nothing.
fn encode_ticket(owner: &str, sql: &str) -> Bytes {
    let mut v = Vec::with_capacity(owner.len() + sql.len() + 8);
    v.extend_from_slice(b"kq1\0");
    v.extend_from_slice(owner.as_bytes());
    v.push(0);
    v.extend_from_slice(sql.as_bytes());
    Bytes::from(v)
}

fn decode_ticket(raw: &[u8]) -> Result<(&str, &str), Status> {
    let bad = || Status::invalid_argument("malformed statement ticket");
    let rest = raw.strip_prefix(b"kq1\0").ok_or_else(bad)?;
    let nul = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
    let owner = std::str::from_utf8(&rest[..nul]).map_err(|_| bad())?;
    let sql = std::str::from_utf8(&rest[nul + 1..]).map_err(|_| bad())?;
    Ok((owner, sql))
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(b) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| {
            Status::internal(format!("cannot encode schema: {e}"))
        })?;
    Ok(b)
}

fn flight_info(
    schema: &Schema,
    ticket: Bytes,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))?;
    Ok(with_endpoint(info, ticket, descriptor))
}

/// FlightInfo for a statement. DDL/DML announce no schema: clients (the ADBC Go driver) then
/// fetch the first endpoint synchronously to learn it, so the statement has run by the time
/// their `execute` returns and the next statement sees its effects.
fn statement_info(
    described: &Described,
    ticket: Bytes,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    if described.is_update {
        Ok(with_endpoint(FlightInfo::new(), ticket, descriptor))
    } else {
        flight_info(&described.schema, ticket, descriptor)
    }
}

fn with_endpoint(info: FlightInfo, ticket: Bytes, descriptor: FlightDescriptor) -> FlightInfo {
    info.with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_total_records(-1)
        .with_total_bytes(-1)
}

/// Encodes a batch stream as Flight data. Errors after data has been sent still reach the client.
/// Rows and bytes sent are counted in `stats`.
fn encode(
    schema: SchemaRef,
    batches: datafusion::execution::SendableRecordBatchStream,
    request_id: Arc<str>,
    stats: &Arc<Stats>,
) -> BoxStream<FlightData> {
    let rid = Arc::clone(&request_id);
    let rows = Arc::clone(stats);
    let input = batches
        .inspect_ok(move |b| Stats::add(&rows.rows_streamed, b.num_rows() as u64))
        .map_err(move |e| FlightError::Tonic(Box::new(datafusion_status(e, &rid))));
    let bytes = Arc::clone(stats);
    let out = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(input)
        .map_err(|e| match e {
            FlightError::Tonic(s) => *s,
            other => Status::internal(format!("encoding failed: {other}")),
        })
        .inspect_ok(move |d| {
            Stats::add(
                &bytes.bytes_streamed,
                (d.data_header.len() + d.data_body.len()) as u64,
            )
        });
    Box::pin(out)
}

fn one_batch(batch: RecordBatch) -> BoxStream<FlightData> {
    let schema = batch.schema();
    let out = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(stream::iter([Ok(batch)]))
        .map_err(|e| Status::internal(format!("encoding failed: {e}")));
    Box::pin(out)
}

/// Reads every record batch of a DoPut stream (the first message carries the descriptor and,
/// for data, the schema).
async fn read_batches(
    request: Request<PeekableFlightDataStream>,
) -> Result<(Option<SchemaRef>, Vec<RecordBatch>), Status> {
    // `into_peekable` keeps the first message (descriptor + schema) that dispatch peeked at.
    let inner = request.into_inner().into_peekable();
    // Some clients (arrow-rs) send a descriptor-only message with no IPC header: skip it.
    let inner = inner.try_filter(|fd| futures::future::ready(!fd.data_header.is_empty()));
    let mut s = FlightRecordBatchStream::new_from_flight_data(inner.map_err(FlightError::from));
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.push(b.map_err(|e| match e {
            FlightError::Tonic(s) => *s,
            other => Status::invalid_argument(format!("malformed Arrow data: {other}")),
        })?);
    }
    Ok((s.schema().cloned(), out))
}

impl KalamFlightService {
    /// `DoExchange`: a live query (DESIGN §7). The first message carries the command.
    pub(crate) async fn live_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<crate::live::LiveStream>, Status> {
        let caller = self.caller(&request).await?;
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| strip_scheme(h, "Bearer"))
            .map(str::to_string);
        let connection = request
            .remote_addr()
            .map_or_else(|| caller.exec.request_id.to_string(), |a| a.to_string());
        let mut input = request.into_inner();
        let cmd = crate::live::read_command(&mut input).await?;
        let call = crate::live::LiveCall {
            engine: Arc::clone(&self.engine),
            auth: Arc::clone(&self.auth),
            exec: Arc::clone(&caller.exec),
            token,
            connection,
        };
        let stream = crate::live::open(call, cmd, input).await?;
        Ok(Response::new(stream))
    }

    /// A service over `engine`.
    pub fn new(engine: Arc<Engine>, auth: Arc<Authenticator>) -> Self {
        Self {
            engine,
            auth,
            prepared: Arc::new(PreparedStatements::default()),
            running: Arc::new(RunningQueries::default()),
            argon2_slots: Arc::new(tokio::sync::Semaphore::new(ARGON2_SLOTS)),
        }
    }

    /// Checks the `authorization` header (Bearer token, or Basic for BI tools).
    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let request_id = request_id_of(req);
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization header"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        let peer = req.remote_addr().map(|a| a.ip());
        let user = if let Some(TokenUser(user)) = req.extensions().get::<TokenUser>() {
            // The auth layer verified the token and read the user (and so the role) from the
            // catalog for this very request.
            Ok(Arc::clone(user))
        } else if let Some(token) = strip_scheme(header, "Bearer") {
            self.auth.verify_token(token)
        } else if let Some(b64) = strip_scheme(header, "Basic") {
            match self.auth.cached_basic(b64) {
                Some(user) => Ok(user),
                None => {
                    let auth = Arc::clone(&self.auth);
                    let b64 = b64.to_string();
                    self.argon2(move || auth.login_basic_cached(&b64, peer))
                        .await?
                }
            }
        } else {
            Err(Error::Unauthenticated(
                "unsupported authorization scheme".into(),
            ))
        };
        let user = user.map_err(|e| to_status(e, &request_id))?;
        let exec = Authenticator::context_for(&user, request_id);
        tracing::debug!(request_id = %exec.request_id, user = %exec.user_name, "authenticated");
        Ok(Caller { exec })
    }

    /// Runs a password check off the async runtime, at most [`ARGON2_SLOTS`] at a time: each
    /// argon2id verification holds ~19 MiB, so unbounded concurrent logins would be unbounded
    /// memory (and a cheap way to exhaust the CPU).
    async fn argon2<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let _slot = self
            .argon2_slots
            .acquire()
            .await
            .map_err(|_| Status::unavailable("server is shutting down"))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// FlightInfo for a metadata command: its result schema, and the command itself as ticket.
    async fn metadata_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        ticket: Vec<u8>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request).await?;
        Ok(Response::new(flight_info(
            schema,
            ticket.into(),
            request.into_inner(),
        )?))
    }

    async fn statement_stream(
        &self,
        caller: &Caller,
        sql: &str,
        params: Option<&RecordBatch>,
    ) -> Result<BoxStream<FlightData>, Status> {
        let span = tracing::info_span!("query", request_id = %caller.exec.request_id, user = %caller.exec.user_name);
        let out = self
            .engine
            .execute(sql, &caller.exec, params)
            .instrument(span)
            .await
            .map_err(|e| caller.status(e))?;
        Ok(match out {
            Output::Stream(s) => encode(
                s.schema(),
                s,
                Arc::clone(&caller.exec.request_id),
                self.engine.stats(),
            ),
            Output::Affected(_) => one_batch(RecordBatch::new_empty(Arc::new(Schema::empty()))),
        })
    }

    async fn update(
        &self,
        caller: &Caller,
        sql: &str,
        params: Option<&RecordBatch>,
    ) -> Result<i64, Status> {
        let out = self
            .engine
            .execute(sql, &caller.exec, params)
            .await
            .map_err(|e| caller.status(e))?;
        match out {
            Output::Affected(n) => Ok(n as i64),
            Output::Stream(mut s) => {
                // A query sent as an update: run it to completion, discard rows.
                while let Some(b) = s.next().await {
                    b.map_err(|e| datafusion_status(e, &caller.exec.request_id))?;
                }
                Ok(-1)
            }
        }
    }

    /// Namespaces and tables this caller may see, as (namespace, table, type, schema).
    async fn visible_tables(
        &self,
        caller: &Caller,
    ) -> Result<Vec<(String, String, &'static str, SchemaRef)>, Status> {
        let state = self.engine.request_state(&caller.exec, false);
        let Some(cat) = state.catalog_list().catalog(CATALOG_NAME) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for ns in cat.schema_names() {
            let Some(schema) = cat.schema(&ns) else {
                continue;
            };
            for t in schema.table_names() {
                if let Ok(Some(p)) = schema.table(&t).await {
                    let kind = if ns == SYSTEM_NAMESPACE {
                        "SYSTEM TABLE"
                    } else {
                        "TABLE"
                    };
                    out.push((ns.clone(), t, kind, p.schema()));
                }
            }
        }
        Ok(out)
    }
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

#[tonic::async_trait]
impl FlightSqlService for KalamFlightService {
    type FlightService = KalamFlightService;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // ADBC sends no HandshakeRequest at all: credentials come only from the header.
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated("handshake needs authorization: Basic <credentials>")
            })?;
        let b64 = strip_scheme(header, "Basic")
            .ok_or_else(|| Status::unauthenticated("handshake needs Basic credentials"))?;
        let request_id = request_id_of(&request);
        let (user, pw) = decode_basic(b64).map_err(|e| to_status(e, &request_id))?;
        let peer = request.remote_addr().map(|a| a.ip());
        let auth = Arc::clone(&self.auth);
        let user = self
            .argon2(move || auth.login(&user, &pw, peer))
            .await?
            .map_err(|e| to_status(e, &request_id))?;
        let token = self.auth.issue_token(&user);
        tracing::info!(%request_id, user = %user.name, "login");
        let header_value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("token is not a valid header value"))?;
        let payload = Bytes::from(token.into_bytes());
        let out = stream::iter([Ok(HandshakeResponse {
            protocol_version: 0,
            payload,
        })]);
        let mut resp: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(out));
        resp.metadata_mut().insert("authorization", header_value);
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request).await?;
        let described = self
            .engine
            .describe(&query.query, &caller.exec)
            .await
            .map_err(|e| caller.status(e))?;
        let ticket = TicketStatementQuery {
            statement_handle: encode_ticket(&caller.exec.user_id, &query.query),
        };
        let info = statement_info(
            &described,
            ticket.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request).await?;
        let (owner, sql) = decode_ticket(&ticket.statement_handle)?;
        if owner != &*caller.exec.user_id {
            return Err(Status::permission_denied(
                "this ticket was issued to another user",
            ));
        }
        let stream = self.statement_stream(&caller, sql, None).await?;
        let stream = self
            .running
            .track(&caller.exec.user_id, &request.get_ref().ticket, stream)?;
        Ok(Response::new(stream))
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request).await?;
        self.update(&caller, &cmd.query, None).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = self.caller(&request).await?;
        let described = self
            .engine
            .describe(&query.query, &caller.exec)
            .await
            .map_err(|e| caller.status(e))?;
        let dataset_schema = schema_bytes(&described.schema)?;
        let parameter_schema = schema_bytes(&described.parameter_schema)?;
        let handle = self
            .prepared
            .create(Arc::clone(&caller.exec.user_id), &query.query, described)
            .map_err(|e| caller.status(e))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            dataset_schema,
            parameter_schema,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let caller = self.caller(&request).await?;
        self.prepared
            .close(&query.prepared_statement_handle, &caller.exec.user_id)
            .map_err(|e| caller.status(e))
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let caller = self.caller(&request).await?;
        let (schema, batches) = read_batches(request).await?;
        if let Some(schema) = schema {
            let params = concat_batches(&schema, &batches)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.prepared
                .bind(
                    &query.prepared_statement_handle,
                    &caller.exec.user_id,
                    params,
                )
                .map_err(|e| caller.status(e))?;
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request).await?;
        let p = self
            .prepared
            .get(&cmd.prepared_statement_handle, &caller.exec.user_id)
            .map_err(|e| caller.status(e))?;
        let info = statement_info(
            &p.described,
            cmd.as_any().encode_to_vec().into(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request).await?;
        let p = self
            .prepared
            .get(&cmd.prepared_statement_handle, &caller.exec.user_id)
            .map_err(|e| caller.status(e))?;
        let stream = self
            .statement_stream(&caller, &p.sql, p.params.as_ref())
            .await?;
        let stream = self
            .running
            .track(&caller.exec.user_id, &request.get_ref().ticket, stream)?;
        Ok(Response::new(stream))
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request).await?;
        let p = self
            .prepared
            .get(&cmd.prepared_statement_handle, &caller.exec.user_id)
            .map_err(|e| caller.status(e))?;
        let (schema, batches) = read_batches(request).await?;
        let params = match schema {
            Some(schema) => Some(
                concat_batches(&schema, &batches)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
            None => p.params.clone(),
        };
        self.update(&caller, &p.sql, params.as_ref()).await
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request).await?;
        if cmd.temporary {
            return Err(Status::unimplemented("temporary tables are not supported"));
        }
        if cmd.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        if let Some(c) = cmd
            .catalog
            .as_deref()
            .filter(|c| !c.is_empty() && *c != CATALOG_NAME)
        {
            return Err(Status::not_found(format!(
                "catalog '{c}' does not exist (the catalog is '{CATALOG_NAME}')"
            )));
        }
        let namespace = cmd
            .schema
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(
                    "ingest needs a target schema (namespace), e.g. db_schema_name='app'",
                )
            })?;
        let opts = cmd.table_definition_options.unwrap_or_default();
        let not_exist = TableNotExistOption::try_from(opts.if_not_exist)
            .unwrap_or(TableNotExistOption::Unspecified);
        let exists =
            TableExistsOption::try_from(opts.if_exists).unwrap_or(TableExistsOption::Unspecified);
        let mode = match (not_exist, exists) {
            (
                TableNotExistOption::Create,
                TableExistsOption::Fail | TableExistsOption::Unspecified,
            ) => IngestMode::Create,
            (TableNotExistOption::Create, TableExistsOption::Replace) => IngestMode::Replace,
            (TableNotExistOption::Create, TableExistsOption::Append) => IngestMode::CreateAppend,
            (_, TableExistsOption::Append) => IngestMode::Append,
            (_, TableExistsOption::Replace) => {
                return Err(Status::invalid_argument(
                    "replace needs if_not_exist=CREATE",
                ));
            }
            _ => IngestMode::Append,
        };
        let options: HashMap<String, String> = cmd.options.clone().into_iter().collect();
        let (schema, batches) = read_batches(request).await?;
        let schema =
            schema.ok_or_else(|| Status::invalid_argument("ingest stream carried no schema"))?;
        let n = self
            .engine
            .ingest(
                &caller.exec,
                &namespace,
                &cmd.table,
                mode,
                &options,
                schema,
                batches,
            )
            .await
            .map_err(|e| caller.status(e))?;
        Ok(n as i64)
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        let schema = query.into_builder().schema();
        self.metadata_info(request, &schema, ticket).await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request).await?;
        let mut b = query.into_builder();
        b.append(CATALOG_NAME);
        Ok(Response::new(one_batch(
            b.build().map_err(|e| Status::internal(e.to_string()))?,
        )))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, ticket).await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request).await?;
        let mut b = query.into_builder();
        let mut names = self.engine.catalog().namespaces();
        names.push(SYSTEM_NAMESPACE.to_string());
        for ns in names {
            b.append(CATALOG_NAME, ns);
        }
        Ok(Response::new(one_batch(
            b.build().map_err(|e| Status::internal(e.to_string()))?,
        )))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, ticket).await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request).await?;
        let tables = self.visible_tables(&caller).await?;
        let mut b = query.into_builder();
        for (ns, t, kind, schema) in tables {
            b.append(CATALOG_NAME, ns, t, kind, &schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(Response::new(one_batch(
            b.build().map_err(|e| Status::internal(e.to_string()))?,
        )))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        let schema = query.into_builder().schema();
        self.metadata_info(request, &schema, ticket).await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request).await?;
        let mut b = query.into_builder();
        b.append("SYSTEM TABLE");
        b.append("TABLE");
        Ok(Response::new(one_batch(
            b.build().map_err(|e| Status::internal(e.to_string()))?,
        )))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        let schema = query.clone().into_builder(sql_info()?).schema();
        self.metadata_info(request, &schema, ticket).await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request).await?;
        let batch = query
            .into_builder(sql_info()?)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(one_batch(batch)))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        let schema = primary_keys_schema();
        self.metadata_info(request, &schema, ticket).await
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request).await?;
        let namespaces = match &query.db_schema {
            Some(ns) => vec![ns.clone()],
            None => self.engine.catalog().namespaces(),
        };
        let mut rows: Vec<(String, String, String, i32)> = Vec::new();
        for ns in namespaces {
            // Resolved through the caller's own catalog view, so the role rules decide what
            // is visible; an invisible or missing table simply has no rows here.
            let Ok(provider) = self
                .engine
                .table_view(&caller.exec, &ns, &query.table)
                .await
            else {
                continue;
            };
            let Some(view) = provider.downcast_ref::<TableView>() else {
                continue;
            };
            for (i, k) in view.runtime.def.primary_key.iter().enumerate() {
                rows.push((ns.clone(), query.table.clone(), k.clone(), i as i32 + 1));
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some(CATALOG_NAME); rows.len()])),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| Some(r.0.clone())),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.2.clone()),
            )),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(StringArray::from(vec![None::<&str>; rows.len()])),
        ];
        let batch = RecordBatch::try_new(primary_keys_schema(), cols)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(one_batch(batch)))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        let schema = query.into_builder(xdbc_info()?).schema();
        self.metadata_info(request, &schema, ticket).await
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request).await?;
        let batch = query
            .into_builder(xdbc_info()?)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(one_batch(batch)))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request).await?;
        Err(Status::invalid_argument(format!(
            "unknown ticket type '{}'",
            message.type_url
        )))
    }

    async fn do_exchange_fallback(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<<Self as FlightService>::DoExchangeStream>, Status> {
        self.live_exchange(request).await
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let caller = self.caller(&request).await?;
        if request.get_ref().r#type != "CancelFlightInfo" {
            return Err(Status::invalid_argument(format!(
                "unknown action '{}'",
                request.get_ref().r#type
            )));
        }
        let req = CancelFlightInfoRequest::decode(request.get_ref().body.clone()).map_err(|e| {
            Status::invalid_argument(format!("malformed CancelFlightInfoRequest: {e}"))
        })?;
        let info = req
            .info
            .ok_or_else(|| Status::invalid_argument("CancelFlightInfoRequest without info"))?;
        let mut cancelled = false;
        for ep in &info.endpoint {
            if let Some(t) = &ep.ticket {
                cancelled |= self.running.cancel(&caller.exec.user_id, &t.ticket);
            }
        }
        // Not running (finished, never started, or someone else's): nothing to stop.
        let status = if cancelled {
            CancelStatus::Cancelled
        } else {
            CancelStatus::NotCancellable
        };
        tracing::debug!(request_id = %caller.exec.request_id, ?status, running = self.running.len(), "CancelFlightInfo");
        let body = CancelFlightInfoResult::new(status).encode_to_vec();
        Ok(Response::new(Box::pin(stream::iter([Ok(
            arrow_flight::Result { body: body.into() },
        )]))))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn sql_info() -> Result<&'static arrow_flight::sql::metadata::SqlInfoData, Status> {
    SQL_INFO
        .as_ref()
        .ok_or_else(|| Status::internal("sql info unavailable"))
}

fn xdbc_info() -> Result<&'static arrow_flight::sql::metadata::XdbcTypeInfoData, Status> {
    XDBC_INFO
        .as_ref()
        .ok_or_else(|| Status::internal("type info unavailable"))
}

fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("key_name", DataType::Utf8, true),
    ]))
}
