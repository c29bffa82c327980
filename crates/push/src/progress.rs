//! Progress on stderr: a bar on a terminal, a plain line every ~2 s
//! otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressStyle};
use std::{
    io::IsTerminal,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the bar is redrawn.
const BAR_TICK: Duration = Duration::from_millis(200);
/// How often a plain line is written.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// Counters shared by the batches in flight and the reporter.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    total_items: u64,
    accepted: AtomicU64,
    applied: AtomicU64,
    /// Items whose batch ended, applied or not: the bar's position.
    finished: AtomicU64,
    failed_jobs: AtomicU64,
    retries: AtomicU64,
}

impl Progress {
    /// Counters for `total_items`, the clock starting now.
    pub fn new(total_items: usize) -> Self {
        Progress {
            started: Instant::now(),
            total_items: total_items as u64,
            accepted: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            failed_jobs: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// A batch of `items` was answered 202/200.
    pub fn accepted(&self, items: usize) {
        self.accepted.fetch_add(items as u64, Ordering::Relaxed);
    }

    /// A batch of `items` ended in a succeeded job.
    pub fn applied(&self, items: usize) {
        self.applied.fetch_add(items as u64, Ordering::Relaxed);
        self.finished.fetch_add(items as u64, Ordering::Relaxed);
    }

    /// A batch of `items` ended without a succeeded job.
    pub fn failed(&self, items: usize) {
        self.failed_jobs.fetch_add(1, Ordering::Relaxed);
        self.finished.fetch_add(items as u64, Ordering::Relaxed);
    }

    /// A request is about to be retried.
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Time since the push started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Requests retried so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Applied items per second so far.
    pub fn rate(&self) -> f64 {
        per_second(self.applied.load(Ordering::Relaxed), self.elapsed())
    }

    fn line(&self) -> String {
        format!(
            "push: accepted={} applied={} failed_jobs={} rate={:.0}/s",
            self.accepted.load(Ordering::Relaxed),
            self.applied.load(Ordering::Relaxed),
            self.failed_jobs.load(Ordering::Relaxed),
            self.rate(),
        )
    }
}

/// Items per second, 0 before any time passed.
pub fn per_second(items: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        items as f64 / secs
    } else {
        0.0
    }
}

/// The task drawing progress until [`Reporter::finish`].
pub struct Reporter {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Reporter {
    /// Starts reporting `progress` on stderr: a bar when stderr is a
    /// terminal, plain lines otherwise.
    pub fn start(progress: Arc<Progress>) -> Reporter {
        let stop = CancellationToken::new();
        let task = if std::io::stderr().is_terminal() {
            tokio::spawn(draw_bar(progress, stop.clone()))
        } else {
            tokio::spawn(write_lines(progress, stop.clone()))
        };
        Reporter { stop, task }
    }

    /// Stops reporting and clears the bar, before the summary is printed.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn draw_bar(progress: Arc<Progress>, stop: CancellationToken) {
    let bar = ProgressBar::new(progress.total_items);
    // Counters on a line of their own, so the bar keeps its width.
    let template = "{elapsed_precise} [{wide_bar}] {pos}/{len} items · ETA {eta}\n{msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    loop {
        // The message first: setting the position draws the bar.
        bar.set_message(format!(
            "accepted {} · applied {} · failed jobs {} · {:.0} items/s applied",
            progress.accepted.load(Ordering::Relaxed),
            progress.applied.load(Ordering::Relaxed),
            progress.failed_jobs.load(Ordering::Relaxed),
            progress.rate(),
        ));
        bar.set_position(progress.finished.load(Ordering::Relaxed));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(BAR_TICK) => {}
        }
    }
    bar.finish_and_clear();
}

async fn write_lines(progress: Arc<Progress>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(LINE_EVERY) => eprintln!("{}", progress.line()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_line_names_every_counter() {
        let progress = Progress::new(10);
        progress.accepted(6);
        progress.applied(4);
        progress.failed(2);
        let line = progress.line();
        assert!(
            line.starts_with("push: accepted=6 applied=4 failed_jobs=1 rate="),
            "{line}"
        );
        assert!(line.ends_with("/s"), "{line}");
    }
}
