//! Many callers, few database round trips: requests queue while a batch is in flight and go
//! together in the next one. A lone request is sent at once; nothing waits to fill a batch.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

/// Answers requests of type `T` with `R`, in batches of at most `max`, with up to `lanes`
/// batches in flight at once.
#[derive(Debug)]
pub struct Batcher<T, R> {
    queue: mpsc::Sender<(T, oneshot::Sender<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the lanes on the current runtime. `run` answers a batch with one answer per
    /// request, in order; a request left without one sees the batcher as stopped.
    pub fn start<F, Fut>(lanes: usize, max: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, receiver) = mpsc::channel(max * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let run = Arc::new(run);
        for _ in 0..lanes {
            let (receiver, run) = (receiver.clone(), run.clone());
            tokio::spawn(async move {
                let mut queued = Vec::with_capacity(max);
                // One lane gathers while the others run theirs: the lock is held only to take
                // what has queued up.
                while receiver.lock().await.recv_many(&mut queued, max).await > 0 {
                    let (batch, replies): (Vec<T>, Vec<oneshot::Sender<R>>) =
                        queued.drain(..).unzip();
                    for (reply, answer) in replies.into_iter().zip(run(batch).await) {
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Self { queue }
    }

    /// Queues `request` and waits for its answer; `None` once the batcher has stopped.
    pub async fn call(&self, request: T) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((request, reply)).await.ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn answers_each_request_and_batches_under_load() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let batcher = Arc::new(Batcher::start(2, 8, move |batch: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                batch.into_iter().map(|n| n * 10).collect::<Vec<_>>()
            }
        }));
        let calls: Vec<_> = (0..64u32)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (n, batcher.call(n).await) })
            })
            .collect();
        for call in calls {
            let (n, answer) = call.await.expect("task");
            assert_eq!(answer, Some(n * 10));
        }
        let batches = batches.load(Ordering::SeqCst);
        assert!(batches >= 8, "at most 8 per batch: {batches} batches");
        assert!(batches < 64, "requests were batched: {batches} batches");
    }

    #[tokio::test]
    async fn a_request_without_an_answer_sees_a_stopped_batcher() {
        let batcher = Batcher::start(1, 4, |_batch: Vec<u32>| async { Vec::<u32>::new() });
        assert_eq!(batcher.call(1).await, None);
    }
}
