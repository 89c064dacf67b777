//! When to renew, and how long to wait after a failure.
//!
//! Everything here is a pure function of its arguments (issued, expires, now,
//! settings, a jitter draw), so tests can sweep the whole range without a
//! clock. The refresh loop is the only caller that feeds it real time.
//!
//! The timeline of one session (see docs/refresh.md for worked numbers):
//!
//! ```text
//! issued ........ renew window [expires-lead-J, expires-lead] ........ floor | expires
//! ```
//!
//! * `lead` is how long before expiry renewal starts. The default keeps at
//!   least 35 minutes in hand for sessions of an hour or more (30% of the
//!   session for long ones), so a healthy credvend never serves less than
//!   30 minutes (SDKs start refetching below 15).
//! * `J`, the jitter window, spreads renewals of many instances or roles
//!   started together. It only ever moves renewal earlier.
//! * `floor` (`--min-remaining`) is the point after which a credential is no
//!   longer served at all; renewal failures keep the old one until then.

use std::time::{Duration, SystemTime};

/// STS's limits on `DurationSeconds`.
pub const MIN_SESSION: Duration = Duration::from_secs(900);
pub const MAX_SESSION: Duration = Duration::from_secs(43_200);
/// The cap STS applies to role chaining (temporary source credentials).
pub const CHAINED_MAX_SESSION: Duration = Duration::from_secs(3_600);
/// What a healthy credvend promises to leave on every credential it serves,
/// for sessions of an hour or more.
pub const SERVED_PROMISE: Duration = Duration::from_secs(30 * 60);
/// Default lead for sessions of an hour or more.
pub const DEFAULT_LEAD: Duration = Duration::from_secs(35 * 60);
/// Largest jitter window.
pub const MAX_JITTER: Duration = Duration::from_secs(5 * 60);

/// The renewal settings of one role, already validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Renewal starts this long before expiry.
    pub lead: Duration,
    /// Credentials with less than this left are not served.
    pub min_remaining: Duration,
}

/// The lead used when `--refresh-lead` is not given. For sessions of an
/// hour or more: 35 minutes, or 30% of the session if that is more, so
/// long sessions are renewed at about 70% of their life and survive hours
/// of STS trouble. Below an hour: two thirds of the session.
pub fn default_lead(duration: Duration) -> Duration {
    if duration >= Duration::from_secs(3600) {
        DEFAULT_LEAD.max(duration * 3 / 10)
    } else {
        duration * 2 / 3
    }
}

/// A setting that cannot work, with the numbers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    #[error(
        "session duration {0}s is outside what STS allows (900s to 43200s); \
         set --duration between 15m and 12h"
    )]
    Duration(u64),
    #[error(
        "refresh lead {lead}s is not shorter than the session duration {duration}s: \
         credentials would be renewed as soon as they arrive; use a lead below {duration}s \
         (default: 35m for sessions of 1h or more)"
    )]
    LeadTooLong { lead: u64, duration: u64 },
    #[error(
        "serving floor (--min-remaining) {floor}s is not below the refresh lead {lead}s: \
         credentials would stop being served before renewal even starts; \
         lower --min-remaining or raise --refresh-lead"
    )]
    FloorAboveLead { floor: u64, lead: u64 },
}

/// Checks a role's settings. Returns the validated timing and, for sessions
/// that cannot meet the 30-minute promise, a warning to log (F09).
pub fn validate(
    duration: Duration,
    lead: Option<Duration>,
    min_remaining: Duration,
) -> Result<(Timing, Option<String>), TimingError> {
    validate_with_floor(duration, lead, min_remaining, MIN_SESSION)
}

/// [`validate`] with another lower bound on the session: only the hidden
/// `--testing-short-sessions` flag lowers it, so tests against an emulator
/// can watch several rotations in seconds.
pub fn validate_with_floor(
    duration: Duration,
    lead: Option<Duration>,
    min_remaining: Duration,
    min_session: Duration,
) -> Result<(Timing, Option<String>), TimingError> {
    if duration < min_session || duration > MAX_SESSION {
        return Err(TimingError::Duration(duration.as_secs()));
    }
    let lead = lead.unwrap_or_else(|| default_lead(duration));
    if lead >= duration {
        return Err(TimingError::LeadTooLong {
            lead: lead.as_secs(),
            duration: duration.as_secs(),
        });
    }
    if min_remaining >= lead {
        return Err(TimingError::FloorAboveLead {
            floor: min_remaining.as_secs(),
            lead: lead.as_secs(),
        });
    }
    let warning = short_session_warning(duration, lead);
    Ok((
        Timing {
            lead,
            min_remaining,
        },
        warning,
    ))
}

fn short_session_warning(duration: Duration, lead: Duration) -> Option<String> {
    let min = |d: Duration| d.as_secs() / 60;
    if duration < Duration::from_secs(3600) {
        Some(format!(
            "a {}-minute session cannot keep 30 minutes on served credentials: botocore and \
             aws-cli refetch below 15 minutes and Go, JavaScript and Java below 5, so clients \
             will call credvend on almost every AWS request; use --duration 1h or more to avoid it",
            min(duration)
        ))
    } else if lead < SERVED_PROMISE {
        Some(format!(
            "--refresh-lead {}m renews with less than 30 minutes left: botocore and aws-cli \
             start refetching below 15 minutes; a lead of 35m avoids refresh storms",
            min(lead)
        ))
    } else {
        None
    }
}

/// The lead actually applied to one credential. A credential shorter than
/// the configured lead (STS gave less than asked, or clocks disagree) is
/// renewed after a quarter of its life rather than at once, which bounds the
/// STS call rate by design.
pub fn effective_lead(lifetime: Duration, lead: Duration) -> Duration {
    lead.min(lifetime * 3 / 4)
}

/// The jitter window for one credential: a fifth of the time before the
/// renewal point, at most five minutes.
pub fn jitter_window(lifetime: Duration, lead: Duration) -> Duration {
    let before = lifetime.saturating_sub(effective_lead(lifetime, lead));
    (before / 5).min(MAX_JITTER)
}

/// When to start renewing a credential.
///
/// `jitter` is a draw from `[0, 1)`. The result is never before `now`, never
/// after `expires - min_remaining` (unless that is already past, in which
/// case it is `now`), and with `jitter = 0` exactly `expires - lead` for a
/// credential at least as long as the lead.
pub fn refresh_at(
    issued: SystemTime,
    expires: SystemTime,
    now: SystemTime,
    timing: &Timing,
    jitter: f64,
) -> SystemTime {
    let lifetime = expires.duration_since(issued).unwrap_or_default();
    let lead = effective_lead(lifetime, timing.lead);
    let window = jitter_window(lifetime, timing.lead);
    let jitter = window.mul_f64(jitter.clamp(0.0, 1.0));

    let ideal = expires
        .checked_sub(lead + jitter)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let last = expires
        .checked_sub(timing.min_remaining)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    ideal.min(last).max(now)
}

/// Delay before retry number `attempt` (1 for the first retry): exponential
/// from `base`, capped at `cap`, with "equal jitter" (half fixed, half
/// random) so instances that failed together do not retry together.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = exp.min(cap);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_800_000_000;
    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }
    fn mins(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn one_hour_session_renews_with_35_minutes_left_at_the_latest() {
        let (t, warn) = validate(mins(60), None, mins(1)).unwrap();
        assert!(warn.is_none());
        let latest = refresh_at(at(0), at(3600), at(0), &t, 0.0);
        assert_eq!(latest, at(25 * 60));
        let earliest = refresh_at(at(0), at(3600), at(0), &t, 0.999_999);
        assert_eq!(jitter_window(mins(60), t.lead), mins(5));
        assert!(earliest >= at(20 * 60) && earliest < at(25 * 60));
    }

    #[test]
    fn long_sessions_renew_at_seventy_percent() {
        assert_eq!(default_lead(mins(120)), mins(36));
        assert_eq!(default_lead(mins(720)), mins(216));
        let (t, _) = validate(mins(720), None, mins(1)).unwrap();
        let at_latest = refresh_at(at(0), at(720 * 60), at(0), &t, 0.0);
        assert_eq!(at_latest, at(504 * 60));
    }

    #[test]
    fn impossible_settings_are_refused_with_numbers() {
        assert_eq!(
            validate(mins(10), None, mins(1)).unwrap_err(),
            TimingError::Duration(600)
        );
        assert_eq!(
            validate(mins(60), Some(mins(60)), mins(1)).unwrap_err(),
            TimingError::LeadTooLong {
                lead: 3600,
                duration: 3600
            }
        );
        assert_eq!(
            validate(mins(60), Some(mins(10)), mins(10)).unwrap_err(),
            TimingError::FloorAboveLead {
                floor: 600,
                lead: 600
            }
        );
        let msg = validate(mins(60), Some(mins(90)), mins(1))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("5400s") && msg.contains("3600s"), "{msg}");
    }

    #[test]
    fn fifteen_minute_session_warns_about_refetching() {
        let (t, warn) = validate(mins(15), None, mins(1)).unwrap();
        assert_eq!(t.lead, mins(10));
        let warn = warn.unwrap();
        assert!(
            warn.contains("15-minute") && warn.contains("--duration 1h"),
            "{warn}"
        );
    }

    #[test]
    fn short_credential_is_not_renewed_immediately() {
        // Asked for an hour with a 35-minute lead, got 15 minutes.
        let t = Timing {
            lead: mins(35),
            min_remaining: mins(1),
        };
        let r = refresh_at(at(0), at(900), at(0), &t, 0.0);
        assert!(r >= at(900 / 4), "renewal at {r:?} would storm STS");
    }

    #[test]
    fn stale_credential_is_renewed_now() {
        let t = Timing {
            lead: mins(35),
            min_remaining: mins(1),
        };
        assert_eq!(refresh_at(at(0), at(3600), at(3590), &t, 0.5), at(3590));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, b, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, b, cap, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(4, b, cap, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(40, b, cap, 1.0), cap);
        assert_eq!(backoff(40, b, cap, 0.0), cap / 2);
    }

    proptest! {
        // Healthy state: whatever the session, lead and jitter, renewal is
        // scheduled no earlier than now, no later than the floor, and for
        // sessions of an hour or more with the default lead, with at least
        // the served promise (30 min) left.
        #[test]
        fn renewal_is_inside_the_window(
            duration in 900u64..=43_200,
            lead_frac in 0.05f64..0.95,
            floor_frac in 0.0f64..0.9,
            age in 0u64..43_200,
            jitter in 0.0f64..1.0,
        ) {
            let duration_d = Duration::from_secs(duration);
            let lead = Duration::from_secs(((duration as f64) * lead_frac) as u64 + 1);
            let floor = lead.mul_f64(floor_frac);
            let Ok((t, _)) = validate(duration_d, Some(lead), floor) else {
                return Ok(());
            };
            let issued = at(0);
            let expires = at(duration);
            let now = at(age.min(duration));
            let r = refresh_at(issued, expires, now, &t, jitter);
            prop_assert!(r >= now);
            let last = expires - t.min_remaining;
            prop_assert!(r <= last || r == now);
            // Fresh credentials are never renewed in the first quarter of life.
            if age == 0 {
                prop_assert!(r >= issued + duration_d / 4 || r == last);
            }
        }

        #[test]
        fn default_lead_keeps_the_promise(
            duration in 3600u64..=43_200,
            jitter in 0.0f64..1.0,
        ) {
            let (t, warn) = validate(Duration::from_secs(duration), None, mins(1)).unwrap();
            prop_assert!(warn.is_none());
            let r = refresh_at(at(0), at(duration), at(0), &t, jitter);
            let left = at(duration).duration_since(r).unwrap();
            // 35 minutes at renewal start leaves 5 minutes of retries before
            // anything served drops under 30.
            prop_assert!(left >= DEFAULT_LEAD, "only {left:?} left");
            prop_assert!(left >= t.lead && left <= t.lead + MAX_JITTER);
        }

        #[test]
        fn backoff_is_bounded(attempt in 0u32..1000, base_ms in 1u64..10_000, cap_s in 1u64..3600, j in 0.0f64..1.0) {
            let cap = Duration::from_secs(cap_s);
            let d = backoff(attempt, Duration::from_millis(base_ms), cap, j);
            prop_assert!(d <= cap);
        }
    }
}
