//! Who was refused, and why: the audit lines of the log, rate-limited so that a flood of
//! refusals cannot flood the log too.
//!
//! A refusal of a token (UNAUTHENTICATED) or of an account (PERMISSION_DENIED) is what an
//! operator looks for after an incident: the peer's address, the token's name when the token
//! is valid, the account asked for, never the token itself. Each kind is logged at most
//! once a second, with the count of those left out since (`suppressed`); the imports' own
//! lines (start, end, "upload refused") are not rate-limited, since each is work done.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// UNAUTHENTICATED refusals, logged at most once a second.
static UNAUTHENTICATED: Throttle = Throttle::new();
/// PERMISSION_DENIED refusals, logged at most once a second.
static DENIED: Throttle = Throttle::new();

/// A call without a valid token was refused. `reason` says what was wrong with the token
/// (missing, not valid), never the token.
pub fn unauthenticated(peer: Option<SocketAddr>, reason: &str) {
    UNAUTHENTICATED.warn(|suppressed| {
        tracing::warn!(
            peer = peer.map(tracing::field::display),
            reason,
            suppressed,
            "refused a call: UNAUTHENTICATED"
        )
    });
}

/// The token named `token` asked to act in `account`, which it does not cover.
pub fn denied(token: &str, account: &str, rpc: &str, peer: Option<SocketAddr>) {
    DENIED.warn(|suppressed| {
        tracing::warn!(
            token,
            account_id = account,
            rpc,
            peer = peer.map(tracing::field::display),
            suppressed,
            "refused a call: PERMISSION_DENIED"
        )
    });
}

/// A warning logged at most once a second, with the number of those left out since the last:
/// a flood must not flood the log too.
pub struct Throttle {
    /// When one was last logged, and how many were left out since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

impl Throttle {
    /// A throttle that has logged nothing yet; `const`, for statics.
    pub const fn new() -> Self {
        Self {
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log` with the count suppressed since the last call that logged, unless one
    /// logged within the last second.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if state
            .0
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            state.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut state.1);
        state.0 = Some(now);
        drop(state);
        log(suppressed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_logs_once_a_second_and_counts_the_rest() {
        let throttle = Throttle::new();
        let mut logged = Vec::new();
        for _ in 0..5 {
            throttle.warn(|suppressed| logged.push(suppressed));
        }
        assert_eq!(logged, vec![0]);
        // A second later, the next one logs with the four left out.
        throttle.state.lock().unwrap().0 = Some(Instant::now() - Duration::from_secs(2));
        throttle.warn(|suppressed| logged.push(suppressed));
        assert_eq!(logged, vec![0, 4]);
    }
}
