//! [`PreparedStatement`]: a server-side statement handle with client-side parameters.

use std::fmt;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
};
use bytes::Bytes;
use futures::{TryStreamExt, stream};
use prost::Message;

use crate::client::{
    CLOSE_PREPARED_STATEMENT, KalamClient, descriptor_only, encode_batches, update_count,
};
use crate::error::{Error, Result};
use crate::stream::{FlightDataStream, RecordBatchStream};

/// A statement prepared on the server by [`KalamClient::prepare`].
///
/// Parameters set with [`bind`](Self::bind) stay on the client and travel with every
/// execution. Call [`close`](Self::close) when done; a dropped statement is only freed when
/// the server expires it.
pub struct PreparedStatement {
    /// Connection and token the statement was prepared with.
    client: KalamClient,
    /// Opaque server handle; replaced if a bind returns a new one.
    handle: Bytes,
    /// Schema of the rows a query returns (empty for statements without rows).
    dataset_schema: SchemaRef,
    /// Schema of the parameters `$1, $2, …` (empty if there are none).
    parameter_schema: SchemaRef,
    /// Parameter rows from [`bind`](Self::bind), sent before/with each execution.
    parameters: Option<RecordBatch>,
}

impl PreparedStatement {
    pub(crate) fn new(
        client: KalamClient,
        handle: Bytes,
        dataset_schema: SchemaRef,
        parameter_schema: SchemaRef,
    ) -> Self {
        Self {
            client,
            handle,
            dataset_schema,
            parameter_schema,
            parameters: None,
        }
    }

    /// Schema of the rows [`query`](Self::query) returns.
    pub fn dataset_schema(&self) -> &SchemaRef {
        &self.dataset_schema
    }

    /// Schema of the parameters the statement expects.
    pub fn parameter_schema(&self) -> &SchemaRef {
        &self.parameter_schema
    }

    /// The server's handle for this statement.
    pub fn handle(&self) -> &Bytes {
        &self.handle
    }

    /// Sets the parameters for the next executions: one row per execution of the statement
    /// (several rows run an update once per row), one column per parameter.
    pub fn bind(&mut self, parameters: RecordBatch) {
        self.parameters = Some(parameters);
    }

    /// Runs the statement as a query and streams the result: the bound parameters go first
    /// (`DoPut CommandPreparedStatementQuery`), then `GetFlightInfo` and `DoGet`.
    pub async fn query(&mut self) -> Result<RecordBatchStream> {
        self.send_parameters().await?;
        let command = CommandPreparedStatementQuery {
            prepared_statement_handle: self.handle.clone(),
        };
        let info = self.client.get_flight_info(&command).await?;
        self.client.fetch(info)
    }

    /// Runs the statement as a query and collects every batch. Meant for tests.
    pub async fn query_collect(&mut self) -> Result<Vec<RecordBatch>> {
        self.query().await?.try_collect().await
    }

    /// Runs the statement as an update (`DoPut CommandPreparedStatementUpdate`, with the bound
    /// parameters as the data) and returns the affected row count.
    pub async fn execute_update(&mut self) -> Result<i64> {
        let command = CommandPreparedStatementUpdate {
            prepared_statement_handle: self.handle.clone(),
        };
        let result = self.client.do_put(self.body(&command)).await?;
        update_count(result)
    }

    /// Frees the statement on the server (`ClosePreparedStatement` action).
    pub async fn close(self) -> Result<()> {
        let request = ActionClosePreparedStatementRequest {
            prepared_statement_handle: self.handle,
        };
        self.client
            .do_action(CLOSE_PREPARED_STATEMENT, request.as_any().encode_to_vec())
            .await?;
        Ok(())
    }

    /// Binds the parameters on the server, adopting the new handle if it returns one.
    async fn send_parameters(&mut self) -> Result<()> {
        if self.parameters.is_none() {
            return Ok(());
        }
        let command = CommandPreparedStatementQuery {
            prepared_statement_handle: self.handle.clone(),
        };
        // A server may answer without a result (older Flight SQL); then the handle stays.
        if let Some(result) = self.client.do_put(self.body(&command)).await? {
            let result = DoPutPreparedStatementResult::decode(result.app_metadata)
                .map_err(Error::decode("DoPutPreparedStatementResult"))?;
            if let Some(handle) = result.prepared_statement_handle {
                self.handle = handle;
            }
        }
        Ok(())
    }

    /// A DoPut body for `command`: the bound parameters, or just the command.
    fn body(&self, command: &impl ProstMessageExt) -> FlightDataStream {
        match &self.parameters {
            Some(parameters) => encode_batches(
                command,
                parameters.schema(),
                stream::iter([Ok(parameters.clone())]),
            ),
            None => descriptor_only(command),
        }
    }
}

impl fmt::Debug for PreparedStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedStatement")
            .field("handle", &self.handle)
            .field("dataset_schema", &self.dataset_schema)
            .field("parameter_schema", &self.parameter_schema)
            .field(
                "bound_rows",
                &self.parameters.as_ref().map(RecordBatch::num_rows),
            )
            .finish_non_exhaustive()
    }
}
