//! The clock rule: a device whose RTC still says 1970 (or any time before
//! this agent was built) must not make a CSR or judge certificate validity
//! until time sync has set the clock.

use crate::error::{Error, ErrorKind, Result};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The earliest time the system clock can plausibly show: the build's
/// `SOURCE_DATE_EPOCH` (Yocto and reproducible builds set it), else the date
/// of this source release.
pub fn earliest_plausible_time() -> SystemTime {
    const SOURCE_RELEASE_EPOCH: u64 = 1_795_000_000; // 2026-11-18
    let epoch = option_env!("SOURCE_DATE_EPOCH")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(SOURCE_RELEASE_EPOCH);
    UNIX_EPOCH + Duration::from_secs(epoch)
}

/// Waits until the clock is past `earliest`, polling; gives up after `bound`.
pub async fn wait_for_plausible_time(
    earliest: SystemTime,
    bound: Duration,
    now: impl Fn() -> SystemTime,
) -> Result<()> {
    const POLL: Duration = Duration::from_secs(2);
    if now() >= earliest {
        return Ok(());
    }
    let started = Instant::now();
    tracing::warn!(
        "the system clock ({}) is earlier than this build ({}); waiting up to {}s for time sync",
        httpdate::fmt_http_date(now()),
        httpdate::fmt_http_date(earliest),
        bound.as_secs()
    );
    while started.elapsed() < bound {
        tokio::time::sleep(POLL.min(bound)).await;
        if now() >= earliest {
            tracing::info!("the clock is set; continuing");
            return Ok(());
        }
    }
    Err(Error::new(
        ErrorKind::Unavailable,
        format!(
            "the system clock ({}) is still earlier than this build ({}) after {}s: a certificate made now would look not-yet-valid; set the time (NTP) and run again",
            httpdate::fmt_http_date(now()),
            httpdate::fmt_http_date(earliest),
            bound.as_secs()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant as StdInstant;

    #[tokio::test]
    async fn a_plausible_clock_does_not_wait() {
        let earliest = UNIX_EPOCH + Duration::from_secs(100);
        let started = StdInstant::now();
        wait_for_plausible_time(earliest, Duration::from_secs(60), || {
            UNIX_EPOCH + Duration::from_secs(200)
        })
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_until_the_clock_is_set() {
        let earliest = UNIX_EPOCH + Duration::from_secs(100);
        let polls = AtomicU64::new(0);
        wait_for_plausible_time(earliest, Duration::from_secs(60), || {
            // Time sync sets the clock on the third look.
            let n = polls.fetch_add(1, Ordering::SeqCst);
            UNIX_EPOCH + Duration::from_secs(if n >= 2 { 200 } else { 0 })
        })
        .await
        .unwrap();
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_bound() {
        let earliest = UNIX_EPOCH + Duration::from_secs(100);
        let err = wait_for_plausible_time(earliest, Duration::from_secs(10), || UNIX_EPOCH)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(
            err.to_string().contains("still earlier than this build"),
            "{err}"
        );
    }

    #[test]
    fn the_earliest_time_is_recent() {
        assert!(earliest_plausible_time() > UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    }
}
