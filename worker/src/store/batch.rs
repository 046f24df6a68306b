//! Many callers, few database round trips: requests queue while a batch is in flight and go
//! together in the next one. A lone request is sent at once; nothing waits to fill a batch.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// Answers requests of type `T` with `R`, in batches of at most `max`, one batch at a time.
///
/// One batch in flight, not several: the next gathers while one runs, and splitting what has
/// queued between batches running side by side made each smaller, which on a machine whose
/// cores the database shares with the worker cost more than the overlap saved
/// (BENCHMARKS.md, change 20).
#[derive(Debug)]
pub struct Batcher<T, R> {
    queue: mpsc::Sender<(T, oneshot::Sender<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts its task on the current runtime. `run` answers a batch with one answer per
    /// request, in order; a request left without one sees the batcher as stopped.
    pub fn start<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, mut receiver) = mpsc::channel(max * 4);
        tokio::spawn(async move {
            let mut queued = Vec::with_capacity(max);
            while receiver.recv_many(&mut queued, max).await > 0 {
                let (batch, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = queued.drain(..).unzip();
                for (reply, answer) in replies.into_iter().zip(run(batch).await) {
                    let _ = reply.send(answer);
                }
            }
        });
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn answers_each_request_and_batches_under_load() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let batcher = Arc::new(Batcher::start(8, move |batch: Vec<u32>| {
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
        let batcher = Batcher::start(4, |_batch: Vec<u32>| async { Vec::<u32>::new() });
        assert_eq!(batcher.call(1).await, None);
    }
}
