//! `sync-ingest push`, the bulk loader: the real binary against a real
//! service.

use crate::gate::BrokerGate;
use crate::helpers::*;
use serde_json::{json, Value};
use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};
use sync_ingest::app::Mode;
use uuid::Uuid;

/// A temporary input file, removed when dropped.
struct InputFile(PathBuf);

impl InputFile {
    fn new(extension: &str, contents: &[u8]) -> InputFile {
        let path = std::env::temp_dir().join(format!("push-{}.{extension}", Uuid::new_v4()));
        std::fs::write(&path, contents).expect("input file written");
        InputFile(path)
    }

    /// One item per line.
    fn ndjson(items: &[Value]) -> InputFile {
        let lines: String = items.iter().map(|item| format!("{item}\n")).collect();
        InputFile::new("ndjson", lines.as_bytes())
    }

    /// A pretty-printed JSON array.
    fn array(items: &[Value]) -> InputFile {
        let text = serde_json::to_string_pretty(items).expect("json");
        InputFile::new("json", text.as_bytes())
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for InputFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a run of `sync-ingest push` left behind.
struct PushRun {
    code: i32,
    stdout: String,
    stderr: String,
}

impl PushRun {
    /// The number after `name:` in the summary.
    fn field(&self, name: &str) -> u64 {
        let prefix = format!("{name}:");
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` in the summary:\n{self}"))
    }
}

impl std::fmt::Display for PushRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `sync-ingest-push ARGS` against `base` with `token` (given through
/// `SYNC_TOKEN`), feeding `stdin`.
async fn push_to(base: &str, token: &str, args: &[&str], stdin: Option<Vec<u8>>) -> PushRun {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sync-ingest-push"));
    command
        .args(["--url", base])
        .args(args)
        .env("SYNC_TOKEN", token)
        .env_remove("SYNC_URL")
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The service runs on this test's runtime: wait for the child elsewhere.
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn()?;
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(&bytes)?;
        }
        child.wait_with_output()
    })
    .await
    .expect("push task")
    .expect("push runs");
    PushRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn push(app: &TestApp, token: &str, args: &[&str]) -> PushRun {
    push_to(&app.base, token, args, None).await
}

/// `count` valid pieces of `company`, each with its own GUID.
fn pieces(company: Uuid, count: usize) -> Vec<Value> {
    (0..count)
        .map(|n| {
            json!({
                "guid": Uuid::new_v4(),
                "company_guid": company,
                "assembly_guid": Uuid::new_v4(),
                "mark": format!("p{n}"),
                "length_mm": 1200.5,
                "attributes": {"grade": "S355"},
            })
        })
        .collect()
}

#[tokio::test]
async fn an_ndjson_file_is_loaded_in_batches_and_summarised() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let file = InputFile::ndjson(&pieces(company, 2500));

    let run = push(&app, &token, &["--entity", "pieces", file.path()]).await;

    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.field("items"), 2500, "{run}");
    assert_eq!(run.field("batches"), 3, "{run}");
    assert_eq!(run.field("succeeded"), 3, "{run}");
    assert_eq!(run.field("failed"), 0, "{run}");
    assert_eq!(run.field("inserted"), 2500, "{run}");
    assert_eq!(run.field("updated"), 0, "{run}");
    assert_eq!(app.count("pieces").await, 2500);
    assert_eq!(app.count("sync_jobs").await, 3);
}

#[tokio::test]
async fn a_json_array_file_is_loaded_with_the_batch_size_asked_for() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let projects: Vec<Value> = (0..25)
        .map(|n| json!({"company_guid": company, "number": format!("P-{n}"), "name": "Bridge"}))
        .collect();
    let file = InputFile::array(&projects);

    let run = push(
        &app,
        &token,
        &["--entity", "projects", "--batch-size", "10", file.path()],
    )
    .await;

    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.field("batches"), 3, "{run}");
    assert_eq!(run.field("inserted"), 25, "{run}");
    assert_eq!(app.count("projects").await, 25);
    assert_eq!(app.count("sync_jobs").await, 3);
}

#[tokio::test]
async fn standard_input_is_read_for_a_dash() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let lines: String = pieces(company, 5)
        .iter()
        .map(|item| format!("{item}\n"))
        .collect();

    let run = push_to(
        &app.base,
        &token,
        &["--entity", "pieces", "-"],
        Some(lines.into_bytes()),
    )
    .await;

    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.field("inserted"), 5, "{run}");
    assert_eq!(app.count("pieces").await, 5);
}

#[tokio::test]
async fn a_second_push_of_the_same_file_reports_updates() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let file = InputFile::ndjson(&pieces(company, 30));
    let args = ["--entity", "pieces", "--batch-size", "10", file.path()];
    let first = push(&app, &token, &args).await;
    assert_eq!(first.code, 0, "{first}");

    let second = push(&app, &token, &args).await;

    assert_eq!(second.code, 0, "{second}");
    assert_eq!(second.field("inserted"), 0, "{second}");
    assert_eq!(second.field("updated"), 30, "{second}");
    assert_eq!(app.count("pieces").await, 30);
    assert_eq!(
        app.count("sync_jobs").await,
        6,
        "each run queues its own jobs"
    );
}

#[tokio::test]
async fn a_rerun_with_the_same_run_id_gets_the_original_jobs_and_queues_nothing() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let file = InputFile::ndjson(&pieces(company, 30));
    let args = [
        "--entity",
        "pieces",
        "--batch-size",
        "10",
        "--run-id",
        "nightly-2026-11-26",
        file.path(),
    ];
    let first = push(&app, &token, &args).await;
    assert_eq!(first.code, 0, "{first}");

    let rerun = push(&app, &token, &args).await;

    assert_eq!(rerun.code, 0, "{rerun}");
    assert_eq!(rerun.field("inserted"), 30, "the original jobs' counts");
    assert_eq!(app.count("sync_jobs").await, 3, "a batch was queued twice");
}

#[tokio::test]
async fn a_batch_with_an_item_of_another_company_is_reported_as_refused_and_exits_1() {
    let app = TestApp::spawn().await;
    let (own, other) = (company(), company());
    let token = app.writer(own).await;
    let mut items = pieces(own, 4);
    items[3]["company_guid"] = json!(other);
    let file = InputFile::ndjson(&items);

    let run = push(
        &app,
        &token,
        &["--entity", "pieces", "--batch-size", "2", file.path()],
    )
    .await;

    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.field("succeeded"), 1, "{run}");
    assert_eq!(run.field("failed"), 1, "{run}");
    assert_eq!(run.field("inserted"), 2, "{run}");
    assert!(
        run.stdout.contains(
            "batch 2 (items 2-3): HTTP 403 company_access_denied: items belong to a company the caller may not write; offending items: 3"
        ),
        "{run}"
    );
    assert_eq!(app.count("pieces").await, 2);
    assert_eq!(app.count("sync_jobs").await, 1);
}

#[tokio::test]
async fn a_failed_job_is_reported_with_its_error_code_and_exits_1() {
    let app = TestApp::spawn().await;
    let (owner, intruder) = (company(), company());
    let owned = pieces(owner, 1);
    let job = app
        .sync("pieces", &app.writer(owner).await, &json!(owned))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // The intruder reuses the owner's GUID in its own item: the worker
    // finds the GUID taken by another company and fails the job.
    let mut items = pieces(intruder, 3);
    items[1]["guid"] = owned[0]["guid"].clone();
    let file = InputFile::array(&items);

    let run = push(
        &app,
        &app.writer(intruder).await,
        &["--entity", "pieces", file.path()],
    )
    .await;

    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.field("failed"), 1, "{run}");
    assert!(
        run.stdout.contains("failed: company_access_violation: ")
            && run.stdout.contains("offending items: 1\n"),
        "{run}"
    );
    assert_eq!(app.count("pieces").await, 1, "the failed job wrote nothing");
}

#[tokio::test]
async fn invalid_json_exits_2_naming_the_place_and_sends_nothing() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let mut text = format!("{}\n", pieces(company, 1)[0]);
    text.push_str("{\"company_guid\": \"x\", \"mark\": }\n");
    let file = InputFile::new("ndjson", text.as_bytes());

    let run = push(&app, &token, &["--entity", "pieces", file.path()]).await;

    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains(&format!("{}:2:", file.path())), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
    assert_eq!(app.count("sync_jobs").await, 0);
}

#[tokio::test]
async fn an_unreadable_file_or_an_oversized_batch_exits_2() {
    let app = TestApp::spawn().await;
    let token = app.writer(company()).await;
    let file = InputFile::ndjson(&pieces(company(), 1));

    let missing = push(
        &app,
        &token,
        &["--entity", "pieces", "/nonexistent/items.json"],
    )
    .await;
    let oversized = push(
        &app,
        &token,
        &["--entity", "pieces", "--batch-size", "1001", file.path()],
    )
    .await;

    assert_eq!(missing.code, 2, "{missing}");
    assert!(
        missing
            .stderr
            .contains("cannot read /nonexistent/items.json"),
        "{missing}"
    );
    assert_eq!(oversized.code, 2, "{oversized}");
    assert!(oversized.stderr.contains("limit of 1000"), "{oversized}");
    assert_eq!(app.count("sync_jobs").await, 0);
}

#[tokio::test]
async fn a_refused_token_stops_the_push_after_the_first_batch() {
    let app = TestApp::spawn().await;
    let file = InputFile::ndjson(&pieces(company(), 3));

    let run = push(
        &app,
        "not-a-key",
        &[
            "--entity",
            "pieces",
            "--batch-size",
            "1",
            "--concurrency",
            "1",
            file.path(),
        ],
    )
    .await;

    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.field("failed"), 3, "{run}");
    assert!(
        run.stdout
            .contains("batch 1 (items 0-0): HTTP 401 unauthorized"),
        "{run}"
    );
    assert!(run.stdout.contains("2 batches not sent"), "{run}");
}

/// `sync-ingest push` of `file`'s pieces in batches of 10, running in the
/// background while the test changes the service under it.
fn push_in_batches_of_10(
    app: &TestApp,
    token: String,
    file: &InputFile,
) -> tokio::task::JoinHandle<PushRun> {
    let (base, path) = (app.base.clone(), file.path().to_owned());
    tokio::spawn(async move {
        let args = ["--entity", "pieces", "--batch-size", "10", path.as_str()];
        push_to(&base, &token, &args, None).await
    })
}

#[tokio::test]
async fn push_resumes_after_503_without_queueing_any_batch_twice() {
    let gate = BrokerGate::closed().await;
    let mut app = TestApp::spawn_with(Mode::Api, |s| s.amqp_url = gate.url.clone()).await;
    let company = company();
    let token = app.writer(company).await;
    let file = InputFile::ndjson(&pieces(company, 20));
    let running = push_in_batches_of_10(&app, token, &file);

    tokio::time::sleep(Duration::from_secs(2)).await;
    gate.open();
    let worker = app.spawn_worker().await;
    let run = running.await.expect("push finished");

    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.field("retries") >= 1,
        "the api never answered 503:\n{run}"
    );
    assert_eq!(run.field("inserted"), 20, "{run}");
    assert!(
        run.stderr.contains("push: accepted="),
        "no plain progress line off a terminal:\n{run}"
    );
    assert_eq!(app.count("pieces").await, 20);
    assert_eq!(app.count("sync_jobs").await, 2, "a batch was queued twice");
    worker.shutdown().await;
    // Clean up through the broker itself, not the proxy this runtime drives.
    app.settings.amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f".into();
}

#[tokio::test]
async fn push_waits_out_company_backlog_full_and_resumes_once_the_backlog_drains() {
    // No worker at first, and a cap of 10 items.
    let app = TestApp::spawn_with(Mode::Api, |s| s.max_company_backlog = 10).await;
    let company = company();
    let token = app.writer(company).await;
    // Thirty finished jobs in the last minute on the company's shard: it
    // drains half a job a second, so the company is told to wait 2 s.
    let warm_up = app.spawn_worker().await;
    for _ in 0..30 {
        app.sync("pieces", &token, &Value::Array(pieces(company, 1)))
            .await;
    }
    warm_up.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Two batches of 10 take the company over its cap before the push.
    for _ in 0..2 {
        app.accepted("pieces", &token, &Value::Array(pieces(company, 10)))
            .await;
    }

    let file = InputFile::ndjson(&pieces(company, 30));
    let running = push_in_batches_of_10(&app, token, &file);
    // Refused (and told to retry after 2 s) until a worker drains the
    // company's backlog.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.count("sync_jobs").await,
        32,
        "a batch over the cap was queued"
    );
    let worker = app.spawn_worker().await;
    let run = running.await.expect("push finished");

    assert_eq!(run.code, 0, "{run}");
    assert!(run.field("retries") >= 1, "never refused:\n{run}");
    assert_eq!(run.field("inserted"), 30, "{run}");
    assert_eq!(app.count("sync_jobs").await, 35, "a batch was queued twice");
    worker.shutdown().await;
}

#[tokio::test]
async fn push_delete_removes_the_rows_a_file_names_and_jobs_lists_them() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let items = pieces(company, 30);
    let file = InputFile::ndjson(&items);
    let loaded = push(&app, &token, &["--entity", "pieces", file.path()]).await;
    assert_eq!(loaded.code, 0, "{loaded}");
    let keys: Vec<Value> = items[..25]
        .iter()
        .map(|i| json!({"guid": i["guid"], "company_guid": company}))
        .chain([json!({"guid": Uuid::new_v4(), "company_guid": company})])
        .collect();
    let keys_file = InputFile::ndjson(&keys);

    let run = push(
        &app,
        &token,
        &[
            "--entity",
            "pieces",
            "--delete",
            "--batch-size",
            "10",
            keys_file.path(),
        ],
    )
    .await;

    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.field("batches"), 3, "{run}");
    assert_eq!(run.field("deleted"), 25, "{run}");
    assert_eq!(run.field("not_found"), 1, "{run}");
    assert_eq!(app.count("pieces").await, 5);

    // `sync-ingest jobs` lists them, newest first; filters pass through.
    let listed = jobs_command(&app, &token, &["--operation", "delete"]).await;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" delete ") && l.contains("succeeded")),
        "{listed}"
    );
    let all = jobs_command(&app, &token, &["--limit", "2"]).await;
    assert_eq!(all.lines().count(), 2, "{all}");
}

/// Runs `sync-ingest-jobs ARGS` against the app; its stdout (exit 0 asserted).
async fn jobs_command(app: &TestApp, token: &str, args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sync-ingest-jobs"));
    command
        .args(["--url", &app.base])
        .args(args)
        .env("SYNC_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("jobs task")
        .expect("jobs runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
