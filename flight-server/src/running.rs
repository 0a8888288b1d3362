//! Running result streams, so `CancelFlightInfo` can stop them.
//!
//! Each DoGet registers its stream under (caller, ticket) and removes it when the stream ends or
//! is dropped (RAII), so the registry holds exactly the in-flight DoGet calls — bounded by
//! [`MAX_RUNNING`] — and nothing after them.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use arrow_flight::FlightData;
use dashmap::DashMap;
use futures::Stream;
use futures::stream::{AbortHandle, Abortable};
use tonic::Status;

/// Bound on concurrently running, cancellable DoGet streams. Beyond it, DoGet is refused with
/// `RESOURCE_EXHAUSTED` rather than growing the registry.
pub const MAX_RUNNING: usize = 65_536;

type Key = [u8; 32];

fn key(user_id: &str, ticket: &[u8]) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(user_id.as_bytes());
    h.update(&[0]);
    h.update(ticket);
    *h.finalize().as_bytes()
}

/// The registry.
#[derive(Debug, Default)]
pub struct RunningQueries {
    /// (caller, ticket) → abort handles of its running streams (a ticket may be redeemed twice).
    map: DashMap<Key, Vec<(u64, AbortHandle)>>,
    /// Entries in `map` (sum of vector lengths).
    len: AtomicUsize,
    /// Distinguishes streams of the same key.
    next_id: std::sync::atomic::AtomicU64,
}

type BoxFlight = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

impl RunningQueries {
    /// Wraps `stream` so it can be cancelled by [`RunningQueries::cancel`] with the same key.
    pub fn track(
        self: &Arc<Self>,
        user_id: &str,
        ticket: &[u8],
        stream: BoxFlight,
    ) -> Result<BoxFlight, Status> {
        if self.len.fetch_add(1, Ordering::SeqCst) >= MAX_RUNNING {
            self.len.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::resource_exhausted("too many running queries"));
        }
        let k = key(user_id, ticket);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (handle, reg) = AbortHandle::new_pair();
        self.map.entry(k).or_default().push((id, handle.clone()));
        Ok(Box::pin(Tracked {
            inner: Abortable::new(stream, reg),
            handle,
            registry: Arc::clone(self),
            key: k,
            id,
            finished: false,
        }))
    }

    /// Cancels every running stream of `ticket` started by `user_id`. True if any was running.
    pub fn cancel(&self, user_id: &str, ticket: &[u8]) -> bool {
        match self.map.get(&key(user_id, ticket)) {
            Some(handles) => {
                handles.iter().for_each(|(_, h)| h.abort());
                !handles.is_empty()
            }
            None => false,
        }
    }

    /// Running streams.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// No running streams.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, k: &Key, id: u64) {
        let mut emptied = false;
        if let Some(mut v) = self.map.get_mut(k) {
            let before = v.len();
            v.retain(|(i, _)| *i != id);
            if v.len() < before {
                self.len.fetch_sub(1, Ordering::SeqCst);
            }
            emptied = v.is_empty();
        }
        if emptied {
            self.map.remove_if(k, |_, v| v.is_empty());
        }
    }
}

/// A stream that ends with `CANCELLED` when aborted and deregisters itself when dropped.
struct Tracked {
    inner: Abortable<BoxFlight>,
    handle: AbortHandle,
    registry: Arc<RunningQueries>,
    key: Key,
    id: u64,
    finished: bool,
}

impl Stream for Tracked {
    type Item = Result<FlightData, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(None) => {
                self.finished = true;
                if self.handle.is_aborted() {
                    Poll::Ready(Some(Err(Status::cancelled(
                        "query cancelled by CancelFlightInfo",
                    ))))
                } else {
                    Poll::Ready(None)
                }
            }
            other => other,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.registry.remove(&self.key, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn cancel_ends_stream_and_registry_empties() {
        let reg = Arc::new(RunningQueries::default());
        let endless: BoxFlight =
            Box::pin(futures::stream::repeat_with(|| Ok(FlightData::default())));
        let mut s = reg.track("u", b"t", endless).unwrap();
        assert!(s.next().await.unwrap().is_ok());
        assert!(!reg.cancel("other-user", b"t"), "only the owner can cancel");
        assert!(reg.cancel("u", b"t"));
        let last = s.next().await.unwrap();
        assert_eq!(last.unwrap_err().code(), tonic::Code::Cancelled);
        assert!(s.next().await.is_none());
        assert_eq!(reg.len(), 1);
        drop(s);
        assert!(reg.is_empty());
        assert!(reg.map.is_empty());
    }
}
