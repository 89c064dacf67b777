//! What the request path reads: each role's current credentials, its tokens
//! and its last upstream error, behind lock-free `ArcSwap`s.
//!
//! Writers are the refresh loop (credentials, errors) and the token watcher
//! (tokens). Readers never wait on a writer and never call STS; a reader sees
//! either the old or the new value of each field, never a mix.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use tokio::sync::watch;

use crate::auth::TokenSet;
use crate::config::RoleSpec;
use crate::creds::Rendered;
use crate::sts::FetchError;

/// Wall-clock time as the daemon sees it. Tests use the tokio variant so
/// that a paused tokio clock moves credential ages too.
#[derive(Clone, Debug)]
pub enum Clock {
    Wall,
    Tokio {
        base: SystemTime,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's (possibly paused) time from now on.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            base: SystemTime::now(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> SystemTime {
        match self {
            Clock::Wall => SystemTime::now(),
            Clock::Tokio { base, start } => *base + start.elapsed(),
        }
    }
}

/// The credentials being served, with when they were obtained.
#[derive(Debug)]
pub struct Current {
    pub rendered: Rendered,
    pub refreshed: SystemTime,
}

/// What the request path can answer for a role right now.
pub enum Answer {
    Serve(Bytes),
    /// No credentials yet: the first fetch is under way or being retried
    /// (with the error of the last attempt, if one failed).
    Cold(Option<Arc<FetchError>>),
    /// Nothing valid to serve: the last upstream error (if any).
    Unavailable(Option<Arc<FetchError>>),
}

/// Everything credvend knows about one role.
pub struct RoleState {
    pub spec: RoleSpec,
    current: ArcSwapOption<Current>,
    last_error: ArcSwapOption<FetchError>,
    tokens: ArcSwap<TokenSet>,
    /// Bumped on every successful renewal; cold requests wait on it.
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for RoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleState")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl RoleState {
    pub fn new(spec: RoleSpec, tokens: TokenSet) -> RoleState {
        RoleState {
            spec,
            current: ArcSwapOption::empty(),
            last_error: ArcSwapOption::empty(),
            tokens: ArcSwap::from_pointee(tokens),
            generation: watch::channel(0).0,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn tokens(&self) -> arc_swap::Guard<Arc<TokenSet>> {
        self.tokens.load()
    }

    pub fn set_tokens(&self, t: TokenSet) {
        self.tokens.store(Arc::new(t));
    }

    /// Publishes new credentials atomically.
    pub fn publish(&self, rendered: Rendered, refreshed: SystemTime) {
        self.current.store(Some(Arc::new(Current {
            rendered,
            refreshed,
        })));
        self.last_error.store(None);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn record_error(&self, e: FetchError) {
        self.last_error.store(Some(Arc::new(e)));
    }

    pub fn last_error(&self) -> Option<Arc<FetchError>> {
        self.last_error.load_full()
    }

    pub fn current(&self) -> Option<Arc<Current>> {
        self.current.load_full()
    }

    /// Time left on the served credentials above the floor, if any.
    pub fn servable_for(&self, now: SystemTime) -> Option<Duration> {
        let cur = self.current.load();
        let cur = cur.as_ref()?;
        let floor = now + self.spec.timing.min_remaining;
        cur.rendered
            .expires
            .duration_since(floor)
            .ok()
            .filter(|d| !d.is_zero())
    }

    /// The answer for a request at `now`, without waiting.
    pub fn answer(&self, now: SystemTime, imds: bool) -> Answer {
        let cur = self.current.load();
        match cur.as_ref() {
            Some(c) if now + self.spec.timing.min_remaining < c.rendered.expires => {
                let body = if imds {
                    &c.rendered.imds
                } else {
                    &c.rendered.container
                };
                Answer::Serve(body.clone())
            }
            Some(_) => Answer::Unavailable(self.last_error()),
            None => Answer::Cold(self.last_error()),
        }
    }

    /// Like [`answer`](Self::answer), but a cold role is waited for up to
    /// `wait` (F11: well under the 1 s JavaScript SDK timeout).
    pub async fn answer_waiting(
        &self,
        now: impl Fn() -> SystemTime,
        imds: bool,
        wait: Duration,
    ) -> Answer {
        match self.answer(now(), imds) {
            Answer::Cold(_) => {
                let mut rx = self.generation.subscribe();
                let _ = tokio::time::timeout(wait, rx.wait_for(|g| *g > 0)).await;
                self.answer(now(), imds)
            }
            a => a,
        }
    }
}

/// The roles being served, indexed for the request path. Replaced whole on
/// reload.
#[derive(Default)]
pub struct Roles {
    pub list: Vec<Arc<RoleState>>,
    by_path: HashMap<String, Arc<RoleState>>,
    by_name: HashMap<String, Arc<RoleState>>,
}

impl Roles {
    pub fn new(list: Vec<Arc<RoleState>>) -> Roles {
        let by_path = list
            .iter()
            .map(|r| (r.spec.path.clone(), r.clone()))
            .collect();
        let by_name = list
            .iter()
            .map(|r| (r.spec.name.clone(), r.clone()))
            .collect();
        Roles {
            list,
            by_path,
            by_name,
        }
    }

    pub fn by_path(&self, path: &str) -> Option<&Arc<RoleState>> {
        self.by_path.get(path)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<RoleState>> {
        self.by_name.get(name)
    }
}
