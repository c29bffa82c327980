//! Slow and stalled clients against a real `sync-ingest api` process: they
//! are closed after the body timeout, they do not crowd out anyone else,
//! and what they cost the api, read from /proc, is printed and bounded.

use crate::cluster::{Cluster, SERIAL};
use crate::telemetry::{sample, scrape};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use uuid::Uuid;

const STALLED: usize = 300;
const BODY_TIMEOUT_SECS: u64 = 5;

/// A field of /proc/PID/status (VmRSS, VmHWM, …) in MiB.
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field present");
    kib / 1024.0
}

/// Open file descriptors of process `pid`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Everything the server sends until it closes the connection, and when
/// it closed it; `None` if it was still open at `deadline`.
async fn until_closed(mut stream: TcpStream, deadline: Instant) -> Option<(String, Instant)> {
    let mut answer = Vec::new();
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some((
            String::from_utf8_lossy(&answer).into_owned(),
            Instant::now(),
        )),
        Err(_) => None,
    }
}

#[tokio::test]
async fn stalled_uploads_are_closed_after_the_body_timeout_and_cost_the_api_little() {
    let _serial = SERIAL.lock().await;
    let timeout = BODY_TIMEOUT_SECS.to_string();
    let mut cluster = Cluster::new(
        2,
        &[
            ("SYNC_BODY_TIMEOUT_SECS", timeout.as_str()),
            // Fewer slots than stalled clients: they must hold none.
            ("SYNC_MAX_REQUESTS_IN_FLIGHT", "32"),
        ],
    )
    .await;
    cluster.start_api().await;
    cluster.start_workers(1);
    let pid = cluster.api.as_ref().expect("api").child.id();
    let company = Uuid::new_v4();
    let token = cluster.writer(company).await;
    let base = cluster.base();
    let client = reqwest::Client::new();
    // Warm: one submission served before measuring.
    let warm = client
        .post(format!("{base}/api/v1/sync/projects"))
        .bearer_auth(&token)
        .json(&json!([{"company_guid": company, "number": "P", "name": "warm"}]))
        .send()
        .await
        .expect("answered");
    assert_eq!(warm.status(), 202);
    let (rss_before, files_before) = (memory_mib(pid, "VmRSS"), open_files(pid));

    // The headers of a 16 MiB upload and one byte of it, then nothing.
    let head = format!(
        "POST /api/v1/sync/pieces HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n[",
        16 * 1024 * 1024
    );
    let addr = base.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("sent");
        stalled.push(stream);
    }
    let deadline = started + Duration::from_secs(BODY_TIMEOUT_SECS + 10);
    let closing: Vec<_> = stalled
        .into_iter()
        .map(|s| tokio::spawn(until_closed(s, deadline)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_stalled, files_stalled) = (memory_mib(pid, "VmRSS"), open_files(pid));

    // Everyone else is served meanwhile, before any stalled upload is let go.
    for n in 0..10 {
        let answer = client
            .post(format!("{base}/api/v1/sync/projects"))
            .bearer_auth(&token)
            .json(&json!([{"company_guid": company, "number": format!("P{n}"), "name": "n"}]))
            .send()
            .await
            .expect("answered");
        assert_eq!(answer.status(), 202);
        let health = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("answered");
        assert_eq!(health.status(), 200);
    }
    let served_within = started.elapsed();
    assert!(
        served_within < Duration::from_secs(BODY_TIMEOUT_SECS),
        "the other requests were served only after {served_within:?}"
    );

    // Every stalled upload is answered 408 and closed, not before the
    // timeout, within it plus a margin.
    let mut last_closed = started;
    for closing in closing {
        let (answer, closed) = closing
            .await
            .expect("joined")
            .expect("the stalled upload was closed within the timeout plus 10 s");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
        assert!(closed >= started + Duration::from_secs(BODY_TIMEOUT_SECS));
        last_closed = last_closed.max(closed);
    }
    let peak = memory_mib(pid, "VmHWM");
    let metrics = scrape(&cluster.ops(None)).await;
    assert!(sample(&metrics, "sync_http_body_timeouts_total", &[]) >= STALLED as f64);
    eprintln!(
        "{STALLED} stalled 16 MiB uploads: api RSS {rss_before:.1} MiB before, \
         {rss_stalled:.1} MiB while they hung, peak {peak:.1} MiB; open files \
         {files_before} -> {files_stalled}; other requests served within \
         {served_within:?}; all closed {:?} after they began (timeout {BODY_TIMEOUT_SECS} s)",
        last_closed - started
    );
    // An announced 16 MiB is not memory held: the api's growth is what the
    // clients sent and the connections' own buffers, far from 300 × 16 MiB.
    assert!(
        rss_stalled - rss_before < 64.0,
        "the api grew by {:.1} MiB under {STALLED} stalled uploads",
        rss_stalled - rss_before
    );
    cluster.teardown().await;
}
