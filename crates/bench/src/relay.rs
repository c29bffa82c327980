//! The least any api could do with a submission: read the body and publish
//! it with a confirm before answering `202` — no authentication, no
//! validation, no job row, nothing parsed.
//!
//! The raw broker baseline's own messages, posted to it the way intake
//! posts batches to the api, measure what HTTP in front of the broker costs
//! on this machine by itself: the client's requests, the reading of the
//! bodies and the extra copies through the kernel all share the cores with
//! the broker. Intake compared with the relay says how much of its distance
//! to the raw publish is the api's own work, and how much any api would pay.

use super::{
    broker,
    cpu::{CpuMeter, CpuPerItem, MachineLoad},
    raw::RawMessage,
    service::{post_all, Request},
    stats::{Latency, Rate},
    BenchError,
};
use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, HeaderMap, StatusCode},
    routing::post,
    Router,
};
use futures_util::StreamExt;
use std::{sync::Arc, thread::JoinHandle, time::Duration};
use sync_ingest::{
    config::Settings,
    domain::Entity,
    queue::{Publisher, Topology},
    telemetry::trace::TraceContext,
};
use tokio::sync::oneshot;
use uuid::Uuid;

/// A relay serving on a port of its own, on a runtime of its own (as the
/// api has a process of its own), until dropped.
pub struct Relay {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay publishing into `topology`'s requests exchange, its
    /// broker connection open before it returns.
    async fn start(amqp_url: &str, topology: Topology) -> Result<Relay, BenchError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let publisher = Arc::new(Publisher::new(
            amqp_url,
            "sync-ingest-bench-relay",
            topology,
            Duration::from_secs(30),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, started) = oneshot::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("bench-relay".into())
            .spawn(move || serve(listener, publisher, ready, stopped))?;
        let relay = Relay {
            url,
            stop: Some(stop),
            thread: Some(thread),
        };
        match started.await {
            Ok(Ok(())) => Ok(relay),
            Ok(Err(e)) => Err(BenchError::Broker(format!("relay: {e}"))),
            Err(_) => Err(BenchError::Task("the relay stopped".into())),
        }
    }

    /// The messages as requests to this relay, each to its own shard.
    fn requests(&self, messages: &[RawMessage]) -> Vec<Request> {
        messages
            .iter()
            .map(|m| Request {
                url: format!("{}/relay/{}", self.url, m.shard),
                token: None,
                items: m.items,
                body: m.body.clone(),
            })
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The relay's thread: its runtime, connection and server.
fn serve(
    listener: std::net::TcpListener,
    publisher: Arc<Publisher>,
    ready: oneshot::Sender<Result<(), String>>,
    stopped: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        if !publisher.is_ready().await {
            let _ = ready.send(Err("cannot connect to the broker".into()));
            return;
        }
        let app = Router::new()
            .route("/relay/{shard}", post(relay))
            .with_state(publisher);
        let _ = ready.send(Ok(()));
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
}

/// Reads the body whole and publishes it to `shard`: `202` once confirmed,
/// `503` if not; an empty body is answered at once.
async fn relay(
    State(publisher): State<Arc<Publisher>>,
    Path(shard): Path<u16>,
    headers: HeaderMap,
    body: Body,
) -> StatusCode {
    // Sized by the announced length, as the api sizes its message.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut message = Vec::with_capacity(announced.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => message.extend_from_slice(&chunk),
            Err(_) => return StatusCode::BAD_REQUEST,
        }
    }
    if message.is_empty() {
        return StatusCode::ACCEPTED;
    }
    let published = publisher.publish_batch(
        shard,
        Uuid::now_v7(),
        Entity::Pieces,
        message,
        TraceContext::new_root(),
    );
    match published.await {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// One relay run's figures.
pub struct RelayRun {
    pub rate: Rate,
    pub latency: Latency,
    /// CPU per item of this process (client and relay) and the broker.
    pub cpu: CpuPerItem,
    pub load: Option<MachineLoad>,
}

/// Posts `messages`, `concurrency` at a time, through a fresh relay into
/// fresh queues, removed after: a relay run as the raw publish runs are.
pub async fn run(
    base: &Settings,
    messages: &[RawMessage],
    concurrency: usize,
    broker_pid: Option<u32>,
) -> Result<RelayRun, BenchError> {
    let items: usize = messages.iter().map(|m| m.items).sum();
    let mut settings = base.clone();
    settings.queue_prefix = format!("bench_relay_{}", &Uuid::new_v4().simple().to_string()[..10]);
    let topology = sync_ingest::app::topology(&settings);
    let relay = Relay::start(&base.amqp_url, topology.clone()).await?;
    let requests = relay.requests(messages);
    broker::settle(broker_pid).await;
    let meter = CpuMeter::bench_and_broker(broker_pid);
    let posted = post_all(requests, concurrency).await;
    let load = meter.load();
    let cpu = meter.settled_per_item(items).await;
    drop(relay);
    topology.remove(&base.amqp_url).await;
    let (rate, latency) = posted?;
    Ok(RelayRun {
        rate,
        latency,
        cpu,
        load,
    })
}
