//! Gated polling: a task that waits on several sources polls each one only
//! when that source's own waker fired, not at every wake-up of the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

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

/// Up to seven gated sources of one loop behind at most one registration of
/// the loop's waker per turn, instead of one per source ([`Gate`] registers
/// at each of its polls): the loop calls [`Gates::register`] at the top of
/// each turn, then [`Gates::poll`] for each source. A source is polled with
/// its own waker ([`Gates::waker`]), which sets its bit and wakes the
/// loop's task; open at first, and again after the source gave something.
/// The registration is skipped while it still holds: the same waker, and
/// no source woke it (a wake-up takes the registered waker) since.
pub(crate) struct Gates {
    woken: AtomicU8,
    task: AtomicWaker,
}

/// The waker of one source behind [`Gates`].
struct Source {
    gates: Arc<Gates>,
    bit: u8,
}

/// Set, with its own bit, by every source's wake-up, before it takes the
/// registered waker: the next turn registers again.
const WOKE: u8 = 0x80;

impl ArcWake for Source {
    fn wake_by_ref(source: &Arc<Self>) {
        source.gates.woken.fetch_or(source.bit | WOKE, Ordering::AcqRel);
        source.gates.task.wake();
    }
}

impl Gates {
    pub(crate) fn new() -> Arc<Gates> {
        Arc::new(Gates { woken: AtomicU8::new(u8::MAX), task: AtomicWaker::new() })
    }

    /// The waker of source `bit` (one bit below 0x80): made once per source.
    pub(crate) fn waker(self: &Arc<Self>, bit: u8) -> Waker {
        debug_assert!(bit.count_ones() == 1 && bit != WOKE);
        futures_util::task::waker(Arc::new(Source { gates: self.clone(), bit }))
    }

    /// Registers the loop's waker, at the top of each turn, before any
    /// [`Gates::poll`] of that turn (a wake-up between the two is then not
    /// lost). `last` is the loop's own: the waker last registered. Skipped
    /// when the registration still holds (the same waker, not woken since),
    /// which leaves the gates' memory alone on such a turn.
    pub(crate) fn register(&self, cx: &Context<'_>, last: &mut Option<Waker>) {
        let same = last.as_ref().is_some_and(|known| known.will_wake(cx.waker()));
        if same && self.woken.load(Ordering::Acquire) & WOKE == 0 {
            return;
        }
        // Cleared before registering: a wake-up from here on sets it again.
        self.woken.fetch_and(!WOKE, Ordering::AcqRel);
        self.task.register(cx.waker());
        if !same {
            *last = Some(cx.waker().clone());
        }
    }

    /// Polls source `bit` through `poll`, with its waker `waker`, if its
    /// gate is open; pending otherwise.
    pub(crate) fn poll<T>(&self, bit: u8, waker: &Waker, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        if self.woken.fetch_and(!bit, Ordering::AcqRel) & bit == 0 {
            return Poll::Pending;
        }
        let polled = poll(&mut Context::from_waker(waker));
        if polled.is_ready() {
            self.woken.fetch_or(bit, Ordering::AcqRel);
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

    #[test]
    fn gates_register_once_and_poll_each_source_only_after_its_own_waker_fired() {
        const A: u8 = 1;
        const B: u8 = 2;
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let task_waker = futures_util::task::waker(task.clone());
        let cx = Context::from_waker(&task_waker);
        let gates = Gates::new();
        let (waker_a, waker_b) = (gates.waker(A), gates.waker(B));
        let (mut polls_a, mut polls_b) = (0, 0);
        let mut last = None;
        let mut turn = |ready_a: bool, ready_b: bool, polls_a: &mut usize, polls_b: &mut usize| {
            gates.register(&cx, &mut last);
            let a = gates.poll(A, &waker_a, |_| {
                *polls_a += 1;
                if ready_a { Poll::Ready(()) } else { Poll::Pending }
            });
            let b = gates.poll(B, &waker_b, |_| {
                *polls_b += 1;
                if ready_b { Poll::Ready(()) } else { Poll::Pending }
            });
            (a.is_ready(), b.is_ready())
        };
        assert_eq!(turn(false, false, &mut polls_a, &mut polls_b), (false, false));
        assert_eq!(turn(false, false, &mut polls_a, &mut polls_b), (false, false));
        assert_eq!((polls_a, polls_b), (1, 1), "both open at first, then shut");
        // B's waker fires: the loop's task is woken, and only B is polled.
        waker_b.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert_eq!(turn(true, true, &mut polls_a, &mut polls_b), (false, true));
        assert_eq!((polls_a, polls_b), (1, 2));
        // B gave something: polled again without a wake-up; A still shut.
        assert_eq!(turn(true, false, &mut polls_a, &mut polls_b), (false, false));
        assert_eq!((polls_a, polls_b), (1, 3));
        assert_eq!(turn(true, false, &mut polls_a, &mut polls_b), (false, false));
        assert_eq!((polls_a, polls_b), (1, 3), "B pending again: shut again");
        waker_a.wake_by_ref();
        assert_eq!(turn(true, false, &mut polls_a, &mut polls_b), (true, false));
        assert_eq!((polls_a, polls_b), (2, 3));
    }

    #[test]
    fn a_skipped_registration_still_wakes_the_loop() {
        const A: u8 = 1;
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let task_waker = futures_util::task::waker(task.clone());
        let cx = Context::from_waker(&task_waker);
        let gates = Gates::new();
        let waker_a = gates.waker(A);
        let mut last = None;
        for wakes in 1..=3 {
            // Turns without a wake-up: the registration is kept, not redone.
            for _ in 0..3 {
                gates.register(&cx, &mut last);
                let _ = gates.poll(A, &waker_a, |_| Poll::<()>::Pending);
            }
            waker_a.wake_by_ref();
            assert_eq!(task.0.load(Ordering::SeqCst), wakes, "every wake-up reaches the loop's task");
        }
        // Another waker (the loop moved): registered at once.
        let other = Arc::new(Task(AtomicUsize::new(0)));
        let other_waker = futures_util::task::waker(other.clone());
        gates.register(&Context::from_waker(&other_waker), &mut last);
        waker_a.wake_by_ref();
        assert_eq!(other.0.load(Ordering::SeqCst), 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 3);
    }
}
