//! The renewal loop: one task per role, the only code that calls STS.
//!
//! One task per role gives single flight by construction: there is never
//! more than one STS call in flight for a role, whatever the request load.
//! The task owns the retry state; the request path only reads what it
//! publishes. A shared [`StsGate`] spaces calls of all roles so that a
//! thousand roles never burst at STS.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::{oneshot, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::creds::{format_timestamp, Credentials};
use crate::metrics::{Metrics, Outcome};
use crate::state::{Clock, RoleState};
use crate::sts::{ErrorClass, FetchError, SharedFetcher};
use crate::timing;

/// Spaces STS calls across all roles: at most `rate` calls start per second.
pub struct StsGate {
    interval: Duration,
    next: Mutex<Instant>,
}

impl StsGate {
    pub fn new(rate_per_sec: u32) -> StsGate {
        StsGate {
            interval: Duration::from_secs(1) / rate_per_sec.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Retry settings shared by every role.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

/// What the first attempt of a role's loop produced, for start-up checks.
pub type FirstOutcome = Result<(), FetchError>;

pub struct Refresher {
    pub role: Arc<RoleState>,
    pub fetcher: SharedFetcher,
    pub gate: Arc<StsGate>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub backoff: Backoff,
}

impl Refresher {
    /// Runs until `cancel` fires. `first` receives the outcome of the first
    /// attempt.
    pub async fn run(self, cancel: CancellationToken, first: oneshot::Sender<FirstOutcome>) {
        let mut first = Some(first);
        let mut attempt: u32 = 0;
        loop {
            let wait = tokio::select! {
                _ = cancel.cancelled() => return,
                w = self.once(&mut attempt, &mut first) => w,
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One renewal attempt; returns how long to wait before the next.
    async fn once(
        &self,
        attempt: &mut u32,
        first: &mut Option<oneshot::Sender<FirstOutcome>>,
    ) -> Duration {
        let name = self.role.name();
        self.gate.acquire().await;
        let started = Instant::now();
        let result = self.fetcher.fetch().await;
        let took = started.elapsed().as_secs_f64();
        let now = self.clock.now();
        let result = result.and_then(|c| usable(c, now, self.role.spec.timing.min_remaining));

        match result {
            Ok(creds) => {
                let expires = creds.expires();
                let rendered = creds.render(now);
                drop(creds);
                let had_error = self.role.last_error().is_some();
                let first_ever = self.role.current().is_none();
                self.role.publish(rendered, now);
                self.metrics.refreshed(name, Outcome::Success, None, took);
                self.metrics.credentials(name, unix(expires), unix(now));
                self.metrics.set_degraded(name, false);
                *attempt = 0;

                let jitter: f64 = rand::rng().random();
                let at = timing::refresh_at(now, expires, now, &self.role.spec.timing, jitter);
                let wait = at.duration_since(now).unwrap_or_default();
                let expires_in = expires.duration_since(now).unwrap_or_default().as_secs();
                if first_ever {
                    tracing::info!(
                        role = name,
                        expires = %format_timestamp(expires),
                        expires_in_s = expires_in,
                        next_refresh_in_s = wait.as_secs(),
                        "first credentials obtained"
                    );
                } else if had_error {
                    tracing::info!(role = name, expires_in_s = expires_in, "renewal recovered");
                } else {
                    tracing::debug!(
                        role = name,
                        expires_in_s = expires_in,
                        next_refresh_in_s = wait.as_secs(),
                        "credentials renewed"
                    );
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                wait
            }
            Err(e) => {
                *attempt = attempt.saturating_add(1);
                let outcome = match e.class {
                    ErrorClass::Throttled => Outcome::Throttled,
                    _ => Outcome::Error,
                };
                self.metrics
                    .refreshed(name, outcome, Some(e.class.label()), took);
                let jitter: f64 = rand::rng().random();
                let wait = match e.class {
                    // Nothing will change on its own soon: check back at the
                    // cap, so a fixed trust policy heals without a restart.
                    ErrorClass::NeedsOperator => {
                        timing::backoff(u32::MAX, self.backoff.base, self.backoff.cap, jitter)
                    }
                    _ => timing::backoff(*attempt, self.backoff.base, self.backoff.cap, jitter),
                };
                let left = self.role.servable_for(now);
                self.metrics.set_degraded(name, left.is_some());
                let hint = e.hint.as_deref().unwrap_or("");
                match (left, e.class) {
                    (Some(left), _) => tracing::warn!(
                        role = name,
                        code = %e.code,
                        error = %e.message,
                        hint,
                        attempt = *attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        still_served_for_s = left.as_secs(),
                        "renewal failed; still serving the previous credentials"
                    ),
                    (None, _) => tracing::error!(
                        role = name,
                        code = %e.code,
                        error = %e.message,
                        hint,
                        attempt = *attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        "renewal failed and no valid credentials are left to serve"
                    ),
                }
                self.role.record_error(e.clone());
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                }
                wait
            }
        }
    }
}

/// Refuses a credential that is already at or under the serving floor when
/// it arrives (F01): publishing it would replace good credentials with
/// nothing servable, and scheduling from it would renew in a tight loop.
fn usable(c: Credentials, now: SystemTime, floor: Duration) -> Result<Credentials, FetchError> {
    if c.expires() > now + floor {
        return Ok(c);
    }
    let left = c.expires().duration_since(now).map(|d| d.as_secs() as i64);
    let left = left.unwrap_or_else(|e| -(e.duration().as_secs() as i64));
    let mut e = FetchError::new(
        ErrorClass::NeedsOperator,
        "ExpiredOnArrival",
        format!(
            "STS returned credentials expiring at {} ({left}s from now), under the serving \
             floor of {}s",
            format_timestamp(c.expires()),
            floor.as_secs()
        ),
    );
    e.hint = Some("check this host's clock (NTP) and what the STS endpoint returns".into());
    Err(e)
}

pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
