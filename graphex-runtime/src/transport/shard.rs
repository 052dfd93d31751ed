//! Socket shards: the sockets of a hub (two-channel sockets and
//! standard-protocol connections) run as futures inside a few long-lived
//! tasks instead of one task each.
//!
//! A change to N sockets then wakes at most one task per shard instead of
//! N tasks, so a large fan-out no longer fills the executor's run queue:
//! every other task of the process (the request that saves the next row,
//! the database driver's replies) waits behind a few shard polls instead of
//! behind N socket tasks. Tokio's cooperative budget bounds what one shard
//! poll does (each socket read and write spends from it), so a shard with
//! many ready sockets yields to the rest of the process regularly.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::transport::gate::Gate;

/// Shards per CPU by default. With the server pinned to one core and
/// overloaded, one per CPU let a few sockets fall a whole queue behind
/// (closed as slow consumers) in every run, four per CPU in one run of
/// five; many more shards put the rest of the process behind more shard
/// polls again (BENCHMARKS.md, "Session 3", overload test).
pub(crate) const SHARDS_PER_CPU: usize = 4;

/// The shard tasks of one hub and the queues that hand them sockets.
pub(crate) struct Shards {
    queues: Vec<mpsc::UnboundedSender<BoxFuture<'static, ()>>>,
    next: AtomicUsize,
    /// The hub's task tracker (not the hub: the hub holds the shards).
    tasks: TaskTracker,
}

impl Shards {
    /// Spawns `count` shard tasks of `hub` on the current runtime; 0:
    /// [`SHARDS_PER_CPU`] per CPU. They end once the hub shuts down and
    /// their sockets have ended.
    pub(crate) fn spawn(hub: &Hub, count: usize) -> Shards {
        let count = match count {
            0 => SHARDS_PER_CPU * std::thread::available_parallelism().map_or(1, usize::from),
            count => count,
        };
        let queues = (0..count)
            .map(|_| {
                let (queue, sockets) = mpsc::unbounded_channel();
                hub.tasks().spawn(run(sockets, hub.shutting_down().clone()));
                queue
            })
            .collect();
        Shards { queues, next: AtomicUsize::new(0), tasks: hub.tasks().clone() }
    }

    /// Runs a socket's future in the next shard, round robin. The queue is
    /// unbounded, but each entry is an accepted connection (bounded by
    /// `Config::max_channels`) that the shard takes at once.
    pub(crate) fn run(&self, socket: BoxFuture<'static, ()>) {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        if let Err(returned) = self.queues[index].send(socket) {
            // The shard task is gone (the hub stopped): run the socket on
            // its own (its channel is born closed: it says 1001 and ends).
            self.tasks.spawn(returned.0);
        }
    }
}

/// One shard: polls its sockets until they end and no more can come (the
/// hub shut down, or dropped its shards).
async fn run(mut incoming: mpsc::UnboundedReceiver<BoxFuture<'static, ()>>, shutdown: CancellationToken) {
    let mut sockets = FuturesUnordered::new();
    let mut open = true;
    // A shard wakes mostly for one of its sockets: the shutdown and the
    // queue of new sockets are polled only once their own waker fired
    // (polling the shutdown takes the token's lock).
    let (shutdown_gate, incoming_gate) = (Gate::new(), Gate::new());
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    loop {
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| shutdown_gate.poll(cx, |cx| cancelled.as_mut().poll(cx))), if open => {
                // Sockets handed over from now on run as tasks of their own
                // (`Shards::run`); those already queued run here.
                incoming.close();
                while let Ok(socket) = incoming.try_recv() {
                    sockets.push(AssertUnwindSafe(socket).catch_unwind());
                }
                open = false;
            }
            socket = std::future::poll_fn(|cx| incoming_gate.poll(cx, |cx| incoming.poll_recv(cx))), if open => match socket {
                // A panic ends its own socket, not the shard's others.
                Some(socket) => sockets.push(AssertUnwindSafe(socket).catch_unwind()),
                None => open = false,
            },
            Some(outcome) = sockets.next(), if !sockets.is_empty() => {
                if outcome.is_err() {
                    tracing::error!("a socket panicked; its connection is dropped");
                }
            }
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn sockets_of_a_shard_run_concurrently_and_a_panic_stays_in_its_socket() {
        let shards = Shards::spawn(&Hub::default(), 1);
        let (release, released) = oneshot::channel::<()>();
        let (first_done, first) = oneshot::channel();
        // The first socket waits for the second: they must run side by side in the one shard.
        shards.run(Box::pin(async move {
            let _ = released.await;
            let _ = first_done.send(());
        }));
        shards.run(Box::pin(async { panic!("one socket fails") }));
        let (second_done, second) = oneshot::channel();
        shards.run(Box::pin(async move {
            let _ = release.send(());
            let _ = second_done.send(());
        }));
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            second.await.expect("the socket after the panicking one ran");
            first.await.expect("the waiting socket was woken and finished");
        })
        .await
        .expect("the shard kept running its sockets");
    }

    #[tokio::test]
    async fn sockets_are_spread_round_robin() {
        let shards = Shards::spawn(&Hub::default(), 3);
        assert_eq!(shards.queues.len(), 3);
        for _ in 0..6 {
            shards.run(Box::pin(async {}));
        }
        assert_eq!(shards.next.load(Ordering::Relaxed), 6);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(
            Shards::spawn(&Hub::default(), 0).queues.len(),
            SHARDS_PER_CPU * cpus,
            "0 means the default per CPU"
        );
    }
}
