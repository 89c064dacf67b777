//! Process signals and systemd notifications.
//!
//! Signals are received by signal-hook on a dedicated thread and forwarded
//! into the runtime as plain events; nothing async runs in a handler.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

/// Starts forwarding signals; events arrive on the returned channel.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<Event>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let ev = if sig == SIGHUP {
                    Event::Reload
                } else {
                    Event::Stop
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Tells systemd (when NOTIFY_SOCKET is set) about a state change. A
/// failure is logged, never fatal: credvend also runs outside systemd.
pub fn notify(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Half the watchdog interval systemd asked for, if any. As
/// sd_watchdog_enabled(3) has it, `WATCHDOG_PID`, when set, must name this
/// process (the variable may have been inherited from a parent).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}
