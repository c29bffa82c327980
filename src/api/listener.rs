//! Serving a router on a listener: HTTP/1.1 connections, each drained
//! gracefully when the service stops.
//!
//! `axum::serve` would do, but it cannot bound hyper's per-connection read
//! buffer, which grows to ~400 KiB for large bodies and stays with the
//! kept-alive connection: with many clients pushing full batches, that
//! would be most of the api's memory.

use crate::telemetry::metrics as m;
use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use std::{sync::Arc, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// Largest read buffer a connection keeps. Bodies are still read whole,
/// in more (cheap) reads.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// How long to pause after a failed accept (e.g. out of file descriptors)
/// rather than spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop`, then lets every connection
/// finish its request in progress and waits for them all. A client must
/// send a request's headers within `patience`, which also closes a
/// kept-alive connection left idle that long (hyper starts the header
/// timer when a connection goes idle).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    patience: Duration,
    limit: Option<ConnectionLimit>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let permit = match &limit {
                    None => None,
                    Some(limit) => match limit.admit() {
                        Some(permit) => Some(permit),
                        // Closed at once: nothing is read from it, and the
                        // client may retry elsewhere or later.
                        None => continue,
                    },
                };
                let served = connection(stream, router.clone(), stop.clone(), patience);
                connections.spawn(async move {
                    served.await;
                    drop(permit);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// At most so many connections open on a listener at once.
#[derive(Clone)]
pub struct ConnectionLimit(Arc<Semaphore>);

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        ConnectionLimit(Arc::new(Semaphore::new(max.max(1))))
    }

    /// A slot for one more connection, held while it is open; `None` when
    /// every slot is taken.
    fn admit(&self) -> Option<OpenConnection> {
        match self.0.clone().try_acquire_owned() {
            Ok(permit) => {
                metrics::gauge!(m::CONNECTIONS_OPEN).increment(1.0);
                Some(OpenConnection { _slot: permit })
            }
            Err(_) => {
                metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
                None
            }
        }
    }
}

/// A connection's slot, given back when it is dropped.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1.0);
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    stop: CancellationToken,
    patience: Duration,
) {
    // Answers are small and written at once: no reason to let Nagle hold
    // them back.
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(READ_BUFFER_MAX)
        .timer(TokioTimer::new())
        .header_read_timeout(patience);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "connection ended with an error");
    }
}
