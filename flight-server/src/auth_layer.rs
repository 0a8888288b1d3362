//! The authentication layer: every RPC except `Handshake` passes through here first, before any
//! message is decoded.
//!
//! Bearer tokens are verified here (a keyed hash, no I/O) and the user is attached to the
//! request; Basic credentials are passed on to the handler, which checks them off the runtime
//! with argon2 (cached). Anything else is answered with `UNAUTHENTICATED` right away.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use kalam_core::auth::Authenticator;
use kalam_core::catalog::UserDef;
use tonic::Status;

/// Path of the one RPC that needs no credentials.
const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";

/// The id of one RPC, attached to the request's extensions; it names the call's span and
/// appears in its logs and in internal-error messages.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// A fresh random request id.
pub fn new_request_id() -> Arc<str> {
    let mut raw = [0u8; 8];
    rand::fill(&mut raw);
    Arc::from(raw.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The user a verified bearer token belongs to, attached to the request's extensions.
#[derive(Debug, Clone)]
pub struct TokenUser(pub Arc<UserDef>);

/// Layer that adds [`AuthService`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer checking credentials with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let request_id = new_request_id();
        req.extensions_mut()
            .insert(RequestId(Arc::clone(&request_id)));
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let span = tracing::info_span!("rpc", %method, %request_id, user = tracing::field::Empty);
        if req.uri().path() != HANDSHAKE_PATH {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok());
            let verdict = match header.and_then(|h| h.split_once(' ')) {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("Bearer") => {
                    match self.auth.verify_token(token.trim()) {
                        Ok(user) => {
                            span.record("user", user.name.as_str());
                            req.extensions_mut().insert(TokenUser(user));
                            Ok(())
                        }
                        Err(e) => Err(Status::unauthenticated(e.to_string())),
                    }
                }
                Some((scheme, _)) if scheme.eq_ignore_ascii_case("Basic") => Ok(()),
                Some(_) => Err(Status::unauthenticated(
                    "unsupported authorization scheme (use Bearer or Basic)",
                )),
                None => Err(Status::unauthenticated("missing authorization header")),
            };
            if let Err(status) = verdict {
                let _enter = span.enter();
                tracing::debug!(message = status.message(), "rejected unauthenticated call");
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        // The standard tower dance: call the clone that was made ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(tracing::Instrument::instrument(inner.call(req), span))
    }
}
