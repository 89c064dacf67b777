//! Wires the parts together: roles and their refresh tasks, the listeners,
//! the token watcher, reload and shutdown.
//!
//! [`App::start`] binds every listener before returning and reports the
//! addresses it really bound, so tests can ask for port 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::auth;
use crate::config::{self, RoleSpec, Settings};
use crate::container::Container;
use crate::imds::{Imds, TokenMint};
use crate::metrics::Metrics;
use crate::refresh::{Backoff, FirstOutcome, Refresher, StsGate};
use crate::server::{self, Limits};
use crate::state::{Clock, RoleState, Roles};
use crate::sts::{Base, SharedFetcher, StsFetcher};

/// State shared by every handler and task.
pub struct Shared {
    pub roles: ArcSwap<Roles>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub cold_wait: Duration,
    pub token_grace: Duration,
    pub token_mode: u32,
    /// Set on SIGTERM: readiness turns false while serving goes on.
    pub stopping: AtomicBool,
}

impl Shared {
    /// Roles that are not ready, with the reason.
    pub fn not_ready(&self) -> Vec<(String, String)> {
        let stopping = self.stopping.load(Ordering::Relaxed);
        let now = self.clock.now();
        let roles = self.roles.load();
        roles
            .list
            .iter()
            .filter_map(|r| {
                let reason = if stopping {
                    "credvend is shutting down".to_string()
                } else if r.servable_for(now).is_some() {
                    return None;
                } else if let Some(e) = r.last_error() {
                    format!("last STS call failed: {}", e.code)
                } else if r.current().is_some() {
                    "credentials below the serving floor".to_string()
                } else {
                    "no credentials yet".to_string()
                };
                Some((r.name().to_string(), reason))
            })
            .collect()
    }

    pub fn all_ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    pub fn update_ready(&self) {
        self.metrics.ready.set(self.all_ready() as i64);
    }
}

/// Makes the fetcher for a role.
pub type FetcherFactory = Arc<dyn Fn(&RoleSpec) -> anyhow::Result<SharedFetcher> + Send + Sync>;

/// The real thing: STS clients from the shared base configuration.
pub fn sts_factory(base: Arc<Base>) -> FetcherFactory {
    Arc::new(move |spec: &RoleSpec| {
        let client = base.client(&spec.source)?;
        Ok(Arc::new(StsFetcher::new(spec.source.clone(), client)) as SharedFetcher)
    })
}

struct RoleTask {
    spec: RoleSpec,
    cancel: CancellationToken,
}

struct ImdsTask {
    role: String,
    stop: CancellationToken,
    addrs: Vec<SocketAddr>,
}

pub struct App {
    pub shared: Arc<Shared>,
    pub listen: Vec<SocketAddr>,
    pub admin: Vec<SocketAddr>,
    settings: Settings,
    factory: FetcherFactory,
    gate: Arc<StsGate>,
    tasks: HashMap<String, RoleTask>,
    imds: HashMap<String, ImdsTask>,
    stop_servers: CancellationToken,
    stop_refresh: CancellationToken,
    servers: Vec<JoinHandle<()>>,
}

/// Receivers for the first outcome of each started role.
pub type FirstOutcomes = Vec<(String, oneshot::Receiver<FirstOutcome>)>;

impl App {
    /// Loads token files, binds every listener and starts every role.
    pub async fn start(
        settings: Settings,
        factory: FetcherFactory,
        clock: Clock,
    ) -> anyhow::Result<(App, FirstOutcomes)> {
        let metrics = Arc::new(Metrics::new());
        let shared = Arc::new(Shared {
            roles: ArcSwap::from_pointee(Roles::default()),
            metrics,
            clock,
            cold_wait: settings.server.cold_wait,
            token_grace: settings.server.token_grace,
            token_mode: settings.server.token_file_mode,
            stopping: AtomicBool::new(false),
        });
        let listeners = server::bind("--listen", &settings.listen).await?;
        let admin_listeners = server::bind("--admin-listen", &settings.admin_listen).await?;
        let mut app = App {
            listen: listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
            admin: admin_listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
            shared: shared.clone(),
            gate: Arc::new(StsGate::new(settings.server.sts_rate)),
            settings,
            factory,
            tasks: HashMap::new(),
            imds: HashMap::new(),
            stop_servers: CancellationToken::new(),
            stop_refresh: CancellationToken::new(),
            servers: Vec::new(),
        };

        // Roles first, so a bad token file stops start-up before serving.
        let mut states = Vec::new();
        let mut firsts = Vec::new();
        for spec in app.settings.roles.clone() {
            let (state, task, rx) = app.spawn_role(spec)?;
            firsts.push((state.name().to_string(), rx));
            app.tasks.insert(state.name().to_string(), task);
            states.push(state);
        }
        shared.metrics.roles.set(states.len() as i64);
        shared.roles.store(Arc::new(Roles::new(states)));

        let limits = app.limits(None);
        let drain = app.settings.server.drain_timeout;
        for l in listeners {
            let h = Arc::new(Container {
                shared: shared.clone(),
            });
            let stop = app.stop_servers.clone();
            app.servers
                .push(tokio::spawn(server::serve(l, h, limits, stop, drain)));
        }
        for l in admin_listeners {
            let h = Arc::new(Admin {
                shared: shared.clone(),
            });
            let stop = app.stop_servers.clone();
            app.servers
                .push(tokio::spawn(server::serve(l, h, limits, stop, drain)));
        }
        app.sync_imds().await?;
        let grace = app.settings.server.token_grace;
        let mode = app.settings.server.token_file_mode;
        let stop = app.stop_refresh.clone();
        tokio::spawn(watch_tokens(shared, grace, mode, stop));
        Ok((app, firsts))
    }

    fn limits(&self, hop_limit: Option<u32>) -> Limits {
        Limits {
            max_connections: self.settings.server.max_connections,
            header_timeout: self.settings.server.header_timeout,
            hop_limit,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The URL to advertise for a role, with the port really bound (which
    /// differs from the configured one when that was 0).
    pub fn full_uri(&self, role: &RoleSpec) -> String {
        let port = self.listen.first().map(|a| a.port()).unwrap_or(0);
        self.settings.full_uri_on(port, role)
    }

    /// The IMDS addresses bound, by role.
    pub fn imds_addrs(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = self
            .imds
            .values()
            .flat_map(|t| t.addrs.iter().map(|a| (t.role.clone(), *a)))
            .collect();
        v.sort();
        v
    }

    fn spawn_role(
        &self,
        spec: RoleSpec,
    ) -> anyhow::Result<(Arc<RoleState>, RoleTask, oneshot::Receiver<FirstOutcome>)> {
        let mode = self.settings.server.token_file_mode;
        let (tokens, created) = auth::load_or_create(&spec.token_file, mode)
            .with_context(|| format!("role `{}`", spec.name))?;
        warn_if_padded(&spec.name, &spec.token_file, &tokens);
        if created {
            tracing::info!(role = %spec.name, path = %spec.token_file.display(), "auth token file created");
        }
        let fetcher = (self.factory)(&spec).with_context(|| format!("role `{}`", spec.name))?;
        let state = Arc::new(RoleState::new(spec.clone(), tokens));
        self.shared.metrics.add_role(&spec.name);
        let cancel = self.stop_refresh.child_token();
        let (tx, rx) = oneshot::channel();
        let refresher = Refresher {
            role: state.clone(),
            fetcher,
            gate: self.gate.clone(),
            metrics: self.shared.metrics.clone(),
            clock: self.shared.clock.clone(),
            backoff: Backoff {
                base: self.settings.server.backoff_base,
                cap: self.settings.server.backoff_cap,
            },
        };
        tokio::spawn(refresher.run(cancel.clone(), tx));
        Ok((state, RoleTask { spec, cancel }, rx))
    }

    /// Starts and stops IMDS listeners to match the roles.
    async fn sync_imds(&mut self) -> anyhow::Result<()> {
        let want: HashMap<String, String> = self
            .settings
            .roles
            .iter()
            .filter_map(|r| r.imds_listen.clone().map(|a| (a, r.name.clone())))
            .collect();
        let stale: Vec<String> = self
            .imds
            .iter()
            .filter(|(addr, t)| want.get(*addr) != Some(&t.role))
            .map(|(a, _)| a.clone())
            .collect();
        for addr in stale {
            if let Some(t) = self.imds.remove(&addr) {
                t.stop.cancel();
            }
        }
        for (addr, role) in want {
            if self.imds.contains_key(&addr) {
                continue;
            }
            let resolved = config::resolve_listen("imds_listen", &addr)?;
            let listeners = server::bind(&format!("role `{role}` imds_listen"), &resolved).await?;
            let stop = self.stop_servers.child_token();
            let hop = self.settings.server.imds_hop_limit;
            let token_file = self
                .settings
                .roles
                .iter()
                .find(|r| r.name == role)
                .map(|r| r.token_file.clone())
                .unwrap_or_default();
            let key = TokenMint::key_path(&token_file);
            let mut addrs = Vec::new();
            for l in listeners {
                addrs.push(l.local_addr()?);
                let h = Arc::new(Imds {
                    shared: self.shared.clone(),
                    role: role.clone(),
                    mint: TokenMint::load_or_create(&key)
                        .with_context(|| format!("role `{role}` IMDS key"))?,
                    allow_v1: self.settings.server.imds_v1,
                });
                let limits = self.limits(Some(hop));
                let drain = self.settings.server.drain_timeout;
                self.servers.push(tokio::spawn(server::serve(
                    l,
                    h,
                    limits,
                    stop.clone(),
                    drain,
                )));
            }
            tracing::info!(role = %role, addrs = ?addrs, "IMDS listening");
            self.imds.insert(addr, ImdsTask { role, stop, addrs });
        }
        Ok(())
    }

    /// Applies a new configuration without dropping connections: unchanged
    /// roles keep their state; new and changed roles are fetched first and
    /// swapped in once they have credentials (or after the STS timeout).
    pub async fn reload(&mut self, new: Settings, wait: Duration) -> anyhow::Result<()> {
        if new.listen != self.settings.listen || new.admin_listen != self.settings.admin_listen {
            tracing::warn!(
                "--listen and --admin-listen changes need a restart; keeping the old addresses"
            );
        }
        let old = self.shared.roles.load_full();
        let mut list = Vec::new();
        let mut specs = new.roles.clone();
        let mut started: Vec<(usize, RoleTask, oneshot::Receiver<FirstOutcome>)> = Vec::new();
        for spec in &new.roles {
            let same = self.tasks.get(&spec.name).is_some_and(|t| &t.spec == spec);
            if same {
                if let Some(s) = old.by_name(&spec.name) {
                    list.push(s.clone());
                    continue;
                }
            }
            match self.spawn_role(spec.clone()) {
                Ok((state, task, rx)) => {
                    started.push((list.len(), task, rx));
                    list.push(state);
                }
                Err(e) => {
                    for (_, t, _) in started {
                        t.cancel.cancel();
                    }
                    return Err(e);
                }
            }
        }
        // Give new roles their first credentials before they replace old
        // ones; one deadline for all, since they fetch concurrently. A
        // changed role that gets none keeps serving with its previous
        // settings rather than drop valid credentials; the next reload
        // tries the change again.
        let deadline = tokio::time::Instant::now() + wait;
        let now = self.shared.clock.now();
        let mut tasks = Vec::new();
        for (i, task, rx) in started {
            let outcome = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(()))) => {
                    tasks.push(task);
                    continue;
                }
                Ok(Ok(Err(e))) => format!("{}: {}", e.code, e.message),
                _ => "no answer from STS in time".to_string(),
            };
            let name = task.spec.name.clone();
            match old.by_name(&name).filter(|s| s.servable_for(now).is_some()) {
                Some(previous) => {
                    tracing::error!(role = %name, error = %outcome, "the changed role could not get credentials; still serving it with the previous settings");
                    task.cancel.cancel();
                    list[i] = previous.clone();
                    specs[i] = previous.spec.clone();
                }
                None => {
                    tracing::error!(role = %name, error = %outcome, "reloaded role has no credentials yet");
                    tasks.push(task);
                }
            }
        }
        self.shared.metrics.roles.set(list.len() as i64);
        self.shared.roles.store(Arc::new(Roles::new(list)));

        for task in tasks {
            if let Some(old) = self.tasks.insert(task.spec.name.clone(), task) {
                old.cancel.cancel();
            }
        }
        let keep: Vec<String> = new.roles.iter().map(|r| r.name.clone()).collect();
        let removed: Vec<String> = self
            .tasks
            .keys()
            .filter(|n| !keep.contains(n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(t) = self.tasks.remove(&name) {
                t.cancel.cancel();
                self.shared.metrics.remove_role(&name);
            }
        }
        self.settings.roles = specs;
        self.sync_imds().await?;
        reload_tokens(
            &self.shared,
            self.settings.server.token_grace,
            self.settings.server.token_file_mode,
        );
        Ok(())
    }

    /// Readiness turns false; serving continues.
    pub fn begin_shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.shared.update_ready();
    }

    /// Stops accepting, lets requests in flight finish within the drain
    /// timeout, and stops renewals.
    pub async fn finish(self) {
        self.stop_servers.cancel();
        let drain = self.settings.server.drain_timeout + Duration::from_millis(200);
        let joined = async {
            for h in self.servers {
                let _ = h.await;
            }
        };
        let _ = tokio::time::timeout(drain, joined).await;
        self.stop_refresh.cancel();
    }
}

/// Polls every role's token file and picks up rotations (F07).
async fn watch_tokens(shared: Arc<Shared>, grace: Duration, mode: u32, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => reload_tokens(&shared, grace, mode),
        }
    }
}

/// Re-reads token files that changed. A vanished file is recreated with a
/// new token; the old one stays valid for the grace period.
pub fn reload_tokens(shared: &Shared, grace: Duration, mode: u32) {
    let roles = shared.roles.load();
    for role in &roles.list {
        reload_token(shared, role, grace, mode);
    }
}

fn warn_if_padded(role: &str, path: &std::path::Path, t: &auth::TokenSet) {
    if t.padded() {
        tracing::warn!(
            role,
            path = %path.display(),
            "the auth token file ends with a newline or spaces: credvend ignores them, but AWS \
             SDKs send the file as it is and refuse it; rewrite it without them \
             (printf '%s' TOKEN > FILE)"
        );
    }
}

/// Re-reads one role's token file if it changed; true if it did.
pub fn reload_token(shared: &Shared, role: &RoleState, grace: Duration, mode: u32) -> bool {
    let path = &role.spec.token_file;
    let current = role.tokens();
    let stamp = match auth::stamp_of(path) {
        Some(s) if s == current.stamp() => return false,
        Some(s) => s,
        None => {
            tracing::warn!(role = role.name(), path = %path.display(), "auth token file vanished; writing a new token");
            if let Err(e) = auth::create(path, mode) {
                tracing::error!(role = role.name(), error = %e, "cannot recreate the auth token file");
                return false;
            }
            auth::stamp_of(path).unwrap_or(current.stamp())
        }
    };
    match auth::load(path) {
        Ok(next) => {
            warn_if_padded(role.name(), path, &next);
            let changed = !current.same_token(&next);
            role.set_tokens(current.rotated(next, grace));
            if changed {
                shared.metrics.token_reloaded(role.name());
                tracing::info!(role = role.name(), path = %path.display(), grace_s = grace.as_secs(), "auth token file reloaded");
            }
            changed
        }
        Err(e) => {
            // Logged once per change of the file, not once per request.
            role.set_tokens(current.restamped(stamp));
            tracing::error!(role = role.name(), error = %e, "auth token file unusable; keeping the previous token");
            false
        }
    }
}
