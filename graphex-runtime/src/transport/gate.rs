//! Gated polling: a task that waits on several sources polls each one only
//! when that source's own waker fired, not at every wake-up of the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::{ArcWake, AtomicWaker};

/// Lets a loop poll one of its sources (a socket's read half and ping
/// timer, a shard's queue of new sockets and its shutdown) only once that
/// source's waker fired, not at every turn of the loop: the source is
/// polled with this gate's waker, which marks the gate and wakes the
/// loop's task. Open at first (the first poll registers), and again after
/// the source gave something (it may have more).
pub(crate) struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Gate {
    fn wake_by_ref(gate: &Arc<Self>) {
        gate.woken.store(true, Ordering::Release);
        gate.task.wake();
    }
}

impl Gate {
    pub(crate) fn new() -> Arc<Gate> {
        Arc::new(Gate { woken: AtomicBool::new(true), task: AtomicWaker::new() })
    }

    /// Polls the source through `poll` if the gate is open; pending otherwise.
    pub(crate) fn poll<T>(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered before the check: a wake-up between the two is not lost.
        self.task.register(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = futures_util::task::waker_ref(self);
        let polled = poll(&mut Context::from_waker(&waker));
        if polled.is_ready() {
            self.woken.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Waker;

    use super::*;

    /// Counts the wake-ups of the loop's task.
    struct Task(AtomicUsize);

    impl ArcWake for Task {
        fn wake_by_ref(task: &Arc<Self>) {
            task.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A source that counts its polls, keeps the waker it was polled with,
    /// and is ready once `ready` is set.
    #[derive(Default)]
    struct Source {
        polls: usize,
        waker: Option<Waker>,
        ready: bool,
    }

    impl Source {
        fn poll(&mut self, gate: &Arc<Gate>, cx: &mut Context<'_>) -> Poll<()> {
            gate.poll(cx, |cx| {
                self.polls += 1;
                self.waker = Some(cx.waker().clone());
                if self.ready { Poll::Ready(()) } else { Poll::Pending }
            })
        }
    }

    #[test]
    fn a_source_is_polled_only_after_its_own_waker_fired_and_again_after_it_gave_something() {
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let task_waker = futures_util::task::waker(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let (gate, mut source) = (Gate::new(), Source::default());
        assert!(source.poll(&gate, &mut cx).is_pending());
        assert!(source.poll(&gate, &mut cx).is_pending());
        assert!(source.poll(&gate, &mut cx).is_pending());
        assert_eq!(source.polls, 1, "open at first, then shut until the source's waker fires");
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
        // The source's waker fires: the loop's task is woken, and the source polled at its next turn.
        source.waker.take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        source.ready = true;
        assert!(source.poll(&gate, &mut cx).is_ready());
        assert_eq!(source.polls, 2);
        // It gave something and may have more: polled again without a wake-up.
        assert!(source.poll(&gate, &mut cx).is_ready());
        assert_eq!(source.polls, 3);
        source.ready = false;
        assert!(source.poll(&gate, &mut cx).is_pending());
        assert!(source.poll(&gate, &mut cx).is_pending());
        assert_eq!(source.polls, 4, "pending again: shut again");
    }
}
