//! Records the jobs of concurrent submissions together. While one INSERT is
//! on its way to PostgreSQL, the jobs that arrive meanwhile wait and go in
//! the next, as one statement and one commit. Under a burst this turns a
//! round trip, a commit and a WAL flush per request into one per group; on
//! a busy machine most of what a job costs PostgreSQL is waking up for its
//! statement, not writing its row. A job that arrives alone goes at once.

use super::jobs::{self, Job, JobStatus, NewJob};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most jobs in one statement.
const MAX_GROUP: usize = 64;

/// Why a job could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The statement that carried the job failed; every job in it gets the
    /// same error.
    #[error("{0}")]
    Database(Arc<sqlx::Error>),
    /// The recording task is gone.
    #[error("the job recorder has stopped")]
    Stopped,
}

/// A job to record, and where its row goes.
type Waiting = (NewJob, JobStatus, oneshot::Sender<Result<Job, RecordError>>);

/// Hands jobs to the task that records them. Cheap to clone; the task ends
/// when the last clone is dropped. The queue needs no bound of its own:
/// every job in it is a request waiting for its answer.
#[derive(Debug, Clone)]
pub struct JobRecorder {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl JobRecorder {
    /// Starts the recording task, writing through `pool`.
    pub fn start(pool: PgPool) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(record(pool, waiting));
        JobRecorder { queue }
    }

    /// Records `job`, starting in `status`; returns its row.
    pub async fn record(&self, job: NewJob, status: JobStatus) -> Result<Job, RecordError> {
        let (reply, row) = oneshot::channel();
        self.queue
            .send((job, status, reply))
            .map_err(|_| RecordError::Stopped)?;
        row.await.map_err(|_| RecordError::Stopped)?
    }
}

/// Records whatever is waiting, one statement at a time.
async fn record(pool: PgPool, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
        let (jobs, replies): (Vec<_>, Vec<_>) = group
            .drain(..)
            .map(|(job, status, reply)| ((job, status), reply))
            .unzip();
        // A reply nobody waits for any more is dropped: its request is gone.
        match jobs::insert_all(&pool, &jobs).await {
            Ok(rows) => {
                for (reply, row) in replies.into_iter().zip(rows) {
                    let _ = reply.send(Ok(row));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(RecordError::Database(error.clone())));
                }
            }
        }
    }
}
