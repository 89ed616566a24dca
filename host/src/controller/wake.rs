//! Waking the controller's loop when the next thing is due (a step, a lease renewal, a status,
//! the watchdog).
//!
//! tokio's timer counts in whole milliseconds and rounds a deadline up to the next tick, and
//! its driver sleeps in `epoll_wait` with a millisecond timeout: measured on the development
//! machine, `tokio::time::sleep_until` woke 1.13 ms late at the median and 2.08 ms at p99
//! (500 sleeps of 2-10 ms, BENCHMARKS.md "Steps start on time: the loop's own timer"). Every
//! step started that much late before its command was even built.
//!
//! So the loop's deadline is kept by a thread of its own waiting on a condition variable with
//! a timeout (a futex with a nanosecond deadline on Linux, woken within the kernel's timer
//! slack), which then wakes the loop through a [`Notify`]. Safe code and no new dependency; a
//! `timerfd` registered with tokio would need `unsafe` (`AsyncFd::register` since tokio 1.54)
//! and would still wake the loop from another thread (the runtime's worker drives the
//! reactor; the loop runs in `block_on`), one hop like this one.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

/// The loop's wake-up timer, one per controller loop. Dropping it ends its thread.
#[derive(Debug)]
pub(crate) struct WakeTimer {
    shared: Arc<Shared>,
    /// The deadline last handed to the thread and not yet seen to fire.
    set: Option<Instant>,
    /// `false` if the thread could not be started: tokio's timer is used instead.
    threaded: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    fired: Notify,
}

#[derive(Debug, Default)]
struct State {
    deadline: Option<std::time::Instant>,
    stop: bool,
}

impl WakeTimer {
    pub(crate) fn new() -> WakeTimer {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let threaded = match std::thread::Builder::new()
            .name("controller-timer".into())
            .spawn(move || keep_time(&theirs))
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no timer thread for the controller loop: steps are timed by tokio's \
                     millisecond timer (about 1 ms later on average)"
                );
                false
            }
        };
        WakeTimer {
            shared,
            set: None,
            threaded,
        }
    }

    /// Returns at `wake` (at once if it has passed); never with `None`.
    ///
    /// Cancel-safe, as the loop's `tokio::select!` needs: dropped before it returns, the
    /// thread keeps its deadline, and a wake-up it sends meanwhile is kept for the next call.
    pub(crate) async fn sleep_until(&mut self, wake: Option<Instant>) {
        let Some(at) = wake else {
            return std::future::pending().await;
        };
        if !self.threaded {
            return tokio::time::sleep_until(at).await;
        }
        loop {
            if Instant::now() >= at {
                return;
            }
            // The thread is told only of an earlier deadline. The loop's next wake moves
            // later on nearly every turn (the watchdog's is "now + 20 ms"), and telling the
            // thread each time would wake it as often as the loop turns; instead it fires at
            // the earlier deadline and the wait below goes on to this one.
            if self.set.is_none_or(|held| held > at) {
                let mut state = self
                    .shared
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                state.deadline = Some(at.into_std());
                drop(state);
                self.shared.changed.notify_one();
                self.set = Some(at);
            }
            self.shared.fired.notified().await;
            // The thread has fired and dropped its deadline (or this is a wake-up kept from
            // an earlier one, and the deadline is set again at no more cost than a lock).
            self.set = None;
        }
    }
}

impl Drop for WakeTimer {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.changed.notify_one();
    }
}

/// The timer thread: waits for the deadline (or for a new one), wakes the loop, repeats.
fn keep_time(shared: &Shared) {
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if state.stop {
            return;
        }
        state = match state.deadline {
            None => shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
            Some(d) => {
                let now = std::time::Instant::now();
                if now >= d {
                    state.deadline = None;
                    shared.fired.notify_one();
                    continue;
                }
                shared
                    .changed
                    .wait_timeout(state, d - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Generous: only there so that a timer that never fires fails the test instead of
    /// hanging it. Nothing here asserts how *soon* a timer fires (timing on a shared machine
    /// belongs in the benchmarks).
    const HANG: Duration = Duration::from_secs(10);

    /// Polls a sleep once (setting the timer) and drops it, as the loop's `select!` does when
    /// another branch wins.
    fn poll_once(sleep: impl std::future::Future<Output = ()>) {
        let mut sleep = std::pin::pin!(sleep);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = sleep.as_mut().poll(&mut cx);
    }

    #[tokio::test]
    async fn it_does_not_return_before_the_deadline() {
        let mut timer = WakeTimer::new();
        assert!(timer.threaded, "the timer thread is the path under test");
        for ms in [1, 3, 7, 20] {
            let at = Instant::now() + Duration::from_millis(ms);
            tokio::time::timeout(HANG, timer.sleep_until(Some(at)))
                .await
                .expect("the timer fires");
            assert!(
                Instant::now() >= at,
                "returned before a deadline {ms} ms away"
            );
        }
    }

    #[tokio::test]
    async fn a_deadline_that_has_passed_returns_at_once_and_none_never() {
        let mut timer = WakeTimer::new();
        let past = Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
        tokio::time::timeout(HANG, timer.sleep_until(Some(past)))
            .await
            .expect("a past deadline returns");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), timer.sleep_until(None))
                .await
                .is_err(),
            "no deadline, no wake-up"
        );
    }

    /// The loop drops the sleep whenever another branch of its `select!` wins. An expiry that
    /// happens while nobody waits must not wake a later, different deadline early.
    #[tokio::test]
    async fn an_expiry_missed_while_cancelled_does_not_end_a_later_deadline_early() {
        let mut timer = WakeTimer::new();
        let early = Instant::now() + Duration::from_millis(5);
        poll_once(timer.sleep_until(Some(early)));
        // Let the abandoned deadline expire with nobody reading it.
        std::thread::sleep(Duration::from_millis(20));
        let later = Instant::now() + Duration::from_millis(30);
        tokio::time::timeout(HANG, timer.sleep_until(Some(later)))
            .await
            .expect("the later deadline fires");
        assert!(Instant::now() >= later, "woken by the stale expiry");
    }

    /// Dropped and called again with the same deadline (the common case: a reading arrived,
    /// the next step is still the same), the timer is not set again and still fires.
    #[tokio::test]
    async fn the_same_deadline_after_a_cancel_still_fires() {
        let mut timer = WakeTimer::new();
        let at = Instant::now() + Duration::from_millis(30);
        for _ in 0..3 {
            poll_once(timer.sleep_until(Some(at)));
        }
        tokio::time::timeout(HANG, timer.sleep_until(Some(at)))
            .await
            .expect("the deadline fires");
        assert!(Instant::now() >= at);
    }
}
