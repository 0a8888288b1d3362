//! Streams in both directions: query results coming in, DoPut bodies going out.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::FlightData;
use arrow_flight::error::FlightError;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// The record batches of one query, streamed from the server as they arrive.
///
/// Nothing is buffered beyond what gRPC flow control holds: poll it to pull more. The
/// endpoints of the query's `FlightInfo` are read one after another, in order.
pub struct RecordBatchStream {
    /// Schema announced in `GetFlightInfo`; `None` if the server left it empty.
    schema: Option<SchemaRef>,
    /// Batches of every endpoint, in order; the first error ends the stream.
    batches: BoxStream<'static, Result<RecordBatch>>,
}

impl RecordBatchStream {
    pub(crate) fn new(
        schema: Option<SchemaRef>,
        batches: BoxStream<'static, Result<RecordBatch>>,
    ) -> Self {
        Self { schema, batches }
    }

    /// The result schema the server announced before sending data, also known when the
    /// result has no rows.
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }
}

impl Stream for RecordBatchStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.batches.poll_next_unpin(cx)
    }
}

impl fmt::Debug for RecordBatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordBatchStream")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Outgoing `FlightData` for a DoPut, as produced by `FlightDataEncoder`.
pub(crate) type FlightDataStream = BoxStream<'static, Result<FlightData, FlightError>>;

/// Splits a fallible DoPut body into an infallible request stream for tonic and a future
/// that resolves with the first input error (and never resolves if there is none).
///
/// On an input error the request stream does **not** end: a clean end would tell the server
/// "that was all the data" and it would commit a truncated ingest. It stalls instead, and the
/// caller drops the call when the error future fires, which resets the HTTP/2 stream.
pub(crate) fn halt_on_error(
    data: FlightDataStream,
) -> (HaltOnError, impl Future<Output = Error> + Send) {
    let (error_tx, error_rx) = oneshot::channel();
    let input_error = async move {
        match error_rx.await {
            Ok(error) => error,
            // The input ended cleanly; only the call itself can finish now.
            Err(_) => std::future::pending().await,
        }
    };
    let stream = HaltOnError {
        data,
        state: HaltState::Running(error_tx),
    };
    (stream, input_error)
}

/// Request stream returned by [`halt_on_error`].
pub(crate) struct HaltOnError {
    /// The encoded body.
    data: FlightDataStream,
    /// Where the body is, and where to report its error.
    state: HaltState,
}

enum HaltState {
    /// Forwarding data; the sender reports the first error.
    Running(oneshot::Sender<Error>),
    /// The body ended cleanly.
    Finished,
    /// The body failed; pending forever until the call is dropped.
    Halted,
}

impl Stream for HaltOnError {
    type Item = FlightData;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FlightData>> {
        match self.state {
            HaltState::Running(_) => {}
            HaltState::Finished => return Poll::Ready(None),
            // No waker is kept on purpose: the owner drops the call instead.
            HaltState::Halted => return Poll::Pending,
        }
        let item = ready!(self.data.poll_next_unpin(cx));
        match item {
            Some(Ok(data)) => Poll::Ready(Some(data)),
            Some(Err(error)) => {
                if let HaltState::Running(error_tx) =
                    std::mem::replace(&mut self.state, HaltState::Halted)
                {
                    // The receiver is gone only if the call already finished.
                    let _ = error_tx.send(Error::from(error));
                }
                Poll::Pending
            }
            None => {
                self.state = HaltState::Finished;
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn clean_input_ends_stream_and_never_reports() {
        let data = futures::stream::iter([Ok(FlightData::default())]).boxed();
        let (stream, input_error) = halt_on_error(data);
        assert_eq!(stream.collect::<Vec<_>>().await.len(), 1);
        assert!(input_error.now_or_never().is_none());
    }

    #[tokio::test]
    async fn failed_input_stalls_stream_and_reports() {
        let data = futures::stream::iter([
            Ok(FlightData::default()),
            Err(FlightError::protocol("boom")),
            Ok(FlightData::default()),
        ])
        .boxed();
        let (mut stream, input_error) = halt_on_error(data);
        assert!(stream.next().await.is_some());
        assert!(
            stream.next().now_or_never().is_none(),
            "must stall, not end"
        );
        let error = input_error.await;
        assert!(error.to_string().contains("boom"), "{error}");
    }
}
