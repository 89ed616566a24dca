//! The session clock: milliseconds on the protocol's timeline, played at a speed, held while
//! paused.
//!
//! Everything the governor sees is on this clock, so the approved step windows and the
//! clock agree by construction. A pause holds the clock: the steps after it run later in wall
//! time but at the same session time, so no dose is lost or repeated by a pause.

use std::time::Duration;

use tokio::time::Instant;

/// A session's clock.
#[derive(Debug, Clone)]
pub struct SessionClock {
    speed: u32,
    /// Session time when the clock last started running (or was held at).
    base_ms: u64,
    /// When it last started running; `None` while held (before the start and while paused).
    running_since: Option<Instant>,
}

impl SessionClock {
    /// A held clock at 0 playing at `speed` (at least 1) times real time once started.
    pub fn new(speed: u32) -> SessionClock {
        SessionClock {
            speed: speed.max(1),
            base_ms: 0,
            running_since: None,
        }
    }

    /// The speed.
    pub fn speed(&self) -> u32 {
        self.speed
    }

    /// Whether the clock is running.
    pub fn is_running(&self) -> bool {
        self.running_since.is_some()
    }

    /// Session milliseconds at `now`.
    pub fn at(&self, now: Instant) -> u64 {
        match self.running_since {
            None => self.base_ms,
            Some(since) => {
                let real_us = now.saturating_duration_since(since).as_micros();
                let session_ms = real_us.saturating_mul(u128::from(self.speed)) / 1000;
                self.base_ms
                    .saturating_add(u64::try_from(session_ms).unwrap_or(u64::MAX))
            }
        }
    }

    /// Starts (or resumes) the clock at `now`.
    pub fn run(&mut self, now: Instant) {
        if self.running_since.is_none() {
            self.running_since = Some(now);
        }
    }

    /// Holds the clock at its time at `now`.
    pub fn hold(&mut self, now: Instant) {
        self.base_ms = self.at(now);
        self.running_since = None;
    }

    /// The wall-clock instant at which the running clock reaches `session_ms` (now or in the
    /// past when it already has; `None` while held).
    pub fn instant_of(&self, session_ms: u64) -> Option<Instant> {
        let since = self.running_since?;
        let ahead = session_ms.saturating_sub(self.base_ms);
        Some(since + self.real(ahead))
    }

    /// The wall-clock length of `session_ms` on this clock, rounded up to whole microseconds.
    pub fn real(&self, session_ms: u64) -> Duration {
        let us = u128::from(session_ms)
            .saturating_mul(1000)
            .div_ceil(u128::from(self.speed));
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    /// The wall-clock milliseconds of `session_ms` on this clock, rounded up (what a lease
    /// on the wire says: devices count real time).
    pub fn real_ms(&self, session_ms: u64) -> u64 {
        session_ms.div_ceil(u64::from(self.speed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_until_run_then_scaled() {
        let t0 = Instant::now();
        let mut c = SessionClock::new(60);
        assert_eq!(c.at(t0 + Duration::from_secs(5)), 0);
        assert_eq!(c.instant_of(10), None);
        c.run(t0);
        assert_eq!(c.at(t0 + Duration::from_millis(500)), 30_000);
        assert_eq!(c.instant_of(60_000), Some(t0 + Duration::from_secs(1)));
        assert_eq!(c.real_ms(2_000), 34);
        assert_eq!(c.real(60), Duration::from_millis(1));
    }

    #[test]
    fn a_pause_holds_session_time() {
        let t0 = Instant::now();
        let mut c = SessionClock::new(10);
        c.run(t0);
        c.hold(t0 + Duration::from_secs(1));
        assert_eq!(c.at(t0 + Duration::from_secs(100)), 10_000);
        c.run(t0 + Duration::from_secs(100));
        assert_eq!(c.at(t0 + Duration::from_secs(101)), 20_000);
        assert_eq!(c.instant_of(30_000), Some(t0 + Duration::from_secs(102)));
        // Time already passed maps to an instant in the past, never a panic.
        assert!(c.instant_of(0).is_some());
    }

    #[test]
    fn speed_zero_is_real_time() {
        let t0 = Instant::now();
        let mut c = SessionClock::new(0);
        c.run(t0);
        assert_eq!(c.at(t0 + Duration::from_millis(1500)), 1500);
        assert_eq!(c.real_ms(2000), 2000);
    }
}
