//! The client table as JSON, made once per change of the table and shared by every request,
//! and the limit on JSON requests served at once.
//!
//! `/api/clients` (the boot network's `ClientRecord`s, the admin listener's `ClientView`s)
//! answered each request by copying the
//! whole table and serializing it: with `[record] max_clients` clients of 64 stages each,
//! up to ~30 MB per request, any number at once. Now the text is kept with the recorder's
//! version of the table it was made from ([`crate::recorder::Published::version`]): requests
//! between two changes share one [`Bytes`], and at most [`JSON_CONCURRENCY`] JSON requests
//! per listener are served at once; the next one gets `503 Service Unavailable` with
//! `Retry-After`, not a queue that grows with the attacker.

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

/// JSON requests served at once on one listener.
pub const JSON_CONCURRENCY: usize = 8;

/// Seconds a refused JSON request is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

/// The JSON text of one view of the table, kept for the version it was made from.
#[derive(Default)]
pub struct SharedJson {
    cache: Mutex<Option<(u64, Bytes)>>,
    /// How many times the text was made (each one a serialization of the whole table).
    made: AtomicU64,
}

impl SharedJson {
    /// The text for the table at `version`: the one kept if it was made from that version,
    /// else `make()`'s (run off the async threads), kept for the next request. Requests
    /// arriving while it is made wait for it rather than make their own.
    pub async fn get<F>(&self, version: u64, make: F) -> Result<Bytes, String>
    where
        F: FnOnce() -> serde_json::Result<Vec<u8>> + Send + 'static,
    {
        let mut cache = self.cache.lock().await;
        if let Some((kept, text)) = &*cache {
            if *kept == version {
                return Ok(text.clone());
            }
        }
        let text = tokio::task::spawn_blocking(make)
            .await
            .map_err(|e| format!("the serializing task failed: {e}"))?
            .map_err(|e| format!("cannot serialize the client table: {e}"))?;
        self.made.fetch_add(1, Ordering::Relaxed);
        let text = Bytes::from(text);
        *cache = Some((version, text.clone()));
        Ok(text)
    }

    /// How many times the text was made since start.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// `get` as a response: `200 application/json`, or 500 naming what failed.
    pub async fn response<F>(&self, version: u64, make: F) -> Response
    where
        F: FnOnce() -> serde_json::Result<Vec<u8>> + Send + 'static,
    {
        match self.get(version, make).await {
            Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot answer /api/clients");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
            }
        }
    }
}

/// At most [`JSON_CONCURRENCY`] (or the given number of) JSON requests at once.
#[derive(Clone)]
pub struct JsonLimit {
    permits: Arc<Semaphore>,
}

impl Default for JsonLimit {
    fn default() -> Self {
        JsonLimit::new(JSON_CONCURRENCY)
    }
}

impl JsonLimit {
    pub fn new(concurrent: usize) -> JsonLimit {
        JsonLimit {
            permits: Arc::new(Semaphore::new(concurrent.max(1))),
        }
    }

    /// A place for one request, held until dropped; `None` when every place is taken (answer
    /// [`busy`]).
    pub fn enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// The answer to a JSON request over the limit: 503 with `Retry-After`.
pub fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".into()),
        ],
        "too many JSON requests at once: try again\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_version_is_made_once_and_a_new_one_again() {
        let shared = SharedJson::default();
        let a = shared.get(1, || serde_json::to_vec(&[1])).await.unwrap();
        let b = shared.get(1, || serde_json::to_vec(&[2])).await.unwrap();
        assert_eq!(
            (&a[..], &b[..], shared.made()),
            (&b"[1]"[..], &b"[1]"[..], 1)
        );
        let c = shared.get(2, || serde_json::to_vec(&[3])).await.unwrap();
        assert_eq!((&c[..], shared.made()), (&b"[3]"[..], 2));
    }

    #[test]
    fn the_limit_refuses_one_more_than_it_holds() {
        let limit = JsonLimit::new(2);
        let held = [limit.enter().unwrap(), limit.enter().unwrap()];
        assert!(limit.enter().is_none());
        let refused = busy();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        drop(held);
        assert!(limit.enter().is_some());
    }
}
