//! `DoExchange` (live queries) with small codec buffers.
//!
//! arrow-flight's generated server decodes and encodes every call with tonic's default 8 KiB
//! buffers, allocated when the call starts and held for its life: 16 KiB per live query, most
//! of what an idle subscription costs. [`FlightRouter`] answers the `DoExchange` path itself,
//! through the same `tonic::server::Grpc` machinery and message-size limits but with
//! [`LIVE_BUFFER_BYTES`] buffers (they grow when a large message passes), and hands every other
//! path to the generated server unchanged.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_flight::FlightData;
use arrow_flight::flight_service_server::FlightServiceServer;
use futures::future::BoxFuture;
use tonic::codec::{BufferSettings, Codec};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::live::LiveStream;
use crate::service::KalamFlightService;

/// gRPC path of `DoExchange`.
const DO_EXCHANGE_PATH: &str = "/arrow.flight.protocol.FlightService/DoExchange";

/// Initial encode and decode buffer of a live query (tonic's default is 8 KiB each).
const LIVE_BUFFER_BYTES: usize = 512;
/// Encoded bytes after which tonic yields to flush (its default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `FlightData` both ways, with [`LIVE_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy, Default)]
struct LiveCodec;

type Prost = ProstCodec<FlightData, FlightData>;

impl Codec for LiveCodec {
    type Encode = FlightData;
    type Decode = FlightData;
    type Encoder = <Prost as Codec>::Encoder;
    type Decoder = <Prost as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        Prost::raw_encoder(BufferSettings::new(LIVE_BUFFER_BYTES, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        Prost::raw_decoder(BufferSettings::new(LIVE_BUFFER_BYTES, YIELD_THRESHOLD))
    }
}

/// The Flight service: `DoExchange` answered here, everything else by the generated server.
#[derive(Clone)]
pub(crate) struct FlightRouter {
    service: Arc<KalamFlightService>,
    generated: FlightServiceServer<KalamFlightService>,
    max_decoding: usize,
    max_encoding: usize,
}

impl FlightRouter {
    pub(crate) fn new(
        service: KalamFlightService,
        max_decoding: usize,
        max_encoding: usize,
    ) -> Self {
        let service = Arc::new(service);
        let generated = FlightServiceServer::from_arc(Arc::clone(&service))
            .max_decoding_message_size(max_decoding)
            .max_encoding_message_size(max_encoding);
        Self {
            service,
            generated,
            max_decoding,
            max_encoding,
        }
    }
}

impl NamedService for FlightRouter {
    const NAME: &'static str = <FlightServiceServer<KalamFlightService> as NamedService>::NAME;
}

/// The `DoExchange` handler as tonic's streaming service.
struct Exchange(Arc<KalamFlightService>);

impl StreamingService<FlightData> for Exchange {
    type Response = FlightData;
    type ResponseStream = LiveStream;
    type Future = BoxFuture<'static, Result<Response<LiveStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<FlightData>>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move { service.live_exchange(request).await })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for FlightRouter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != DO_EXCHANGE_PATH {
            return self.generated.call(request);
        }
        let method = Exchange(Arc::clone(&self.service));
        let mut grpc = Grpc::new(LiveCodec)
            .apply_max_message_size_config(Some(self.max_decoding), Some(self.max_encoding));
        Box::pin(async move { Ok(grpc.streaming(method, request).await) })
    }
}
