//! In-place reload: on `SIGHUP` (what `batchgate reload` and `systemctl reload` send) the
//! config file is read and validated in full, off the request path; a valid one is applied
//! through `proxy::Reconfigure`, an invalid one changes nothing.
//!
//! What a reload changes: routes, dialect settings, route limits and guards, upstreams (an
//! unchanged upstream keeps its client and pooled connections), the default upstream,
//! `max_in_flight` (permits are never revoked: a lower total is reached as items finish),
//! `[server.admission]`, `item_log`, `access_log` and `passthrough_lane`. What it cannot change (listeners, threads, TLS
//! listener settings, client connection limits, the admin listener, shutdown timings, pid
//! file, logging, `[tracing]`) is reported as "needs an upgrade" and keeps its running value; the rest
//! still applies. Each attempt is counted in `batchgate_config_reloads_total{result}` and
//! logged; the file in effect is `batchgate_config_info{sha256}`.

use crate::admin::{readiness_target, ReadinessTarget};
use crate::config::Config;
use crate::proxy::Reconfigure;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Mutex;

/// What one reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// The new config is in effect, except the settings listed (they need an upgrade).
    Applied { needs_upgrade: Vec<&'static str> },
    /// The file could not be read or is invalid: nothing changed. The error in `check`'s
    /// format (`FILE:LINE:COL: key: message`, one problem per line).
    Refused(String),
}

/// Reloads the file it was started from; one reload at a time.
pub struct Reloader {
    path: PathBuf,
    /// Written once SIGHUP is handled: before, a SIGHUP would end the process (its default
    /// action), so nothing may name this process to `batchgate reload` yet.
    pid_file: PathBuf,
    target: Reconfigure,
    /// What `/readyz` probes: the default upstream of the config in effect.
    readiness: ReadinessTarget,
    /// The config in effect, to tell what a new one changes.
    current: Mutex<Config>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        pid_file: PathBuf,
        target: Reconfigure,
        readiness: ReadinessTarget,
        current: Config,
    ) -> Self {
        crate::metrics::config_loaded(&current.sha256);
        Reloader {
            path,
            pid_file,
            target,
            readiness,
            current: Mutex::new(current),
        }
    }

    /// Reads, validates and applies the file; logs and counts the result.
    pub fn reload(&self) -> Reloaded {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let result = match Config::from_path(&self.path) {
            Err(error) => Reloaded::Refused(error.to_string()),
            Ok(config) => {
                if !current.routes.is_empty() && config.routes.is_empty() {
                    // Valid, but most likely a file caught half-written by an editor or a
                    // copy: say so loudly (it still applies, as the file says).
                    tracing::warn!(
                        file = %self.path.display(),
                        "config reload removes every batch route: batches are now passed through unchanged; write config files to a temporary name and rename them into place"
                    );
                }
                let needs_upgrade = needs_upgrade(&current, &config);
                self.target.apply(&config);
                self.readiness
                    .store(readiness_target(&config).map(std::sync::Arc::new));
                for warning in &config.warnings {
                    tracing::warn!("{warning}");
                }
                crate::metrics::config_loaded(&config.sha256);
                *current = config;
                Reloaded::Applied { needs_upgrade }
            }
        };
        crate::metrics::config_reload(matches!(result, Reloaded::Applied { .. }));
        match &result {
            Reloaded::Applied { needs_upgrade } => {
                for key in needs_upgrade {
                    tracing::warn!(
                        key,
                        "config reload: {key} changed, which needs an upgrade (batchgate run -u); it keeps its running value"
                    );
                }
                tracing::info!(
                    file = %self.path.display(),
                    sha256 = %current.sha256,
                    routes = current.routes.len(),
                    upstreams = current.upstreams.len(),
                    "config reloaded"
                );
            }
            Reloaded::Refused(error) => {
                for line in error.lines() {
                    tracing::error!("config reload refused, nothing changed: {line}");
                }
            }
        }
        result
    }
}

/// The settings that differ between `old` and `new` and only an upgrade can change.
fn needs_upgrade(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    #[rustfmt::skip]
    let checks = [
        ("server.listen", a.listen != b.listen),
        ("server.tls_listen", a.tls_listen != b.tls_listen),
        ("server.tls", a.tls_source != b.tls_source),
        ("server.h2c", a.h2c != b.h2c),
        ("server.threads", a.threads != b.threads),
        ("server.work_stealing", a.work_stealing != b.work_stealing),
        ("server.client_* and max_client_connections", a.client != b.client),
        ("server.grace_period", a.grace_period != b.grace_period),
        ("server.graceful_shutdown_timeout", a.graceful_shutdown_timeout != b.graceful_shutdown_timeout),
        ("server.pid_file", a.pid_file != b.pid_file),
        ("server.upgrade_sock", a.upgrade_sock != b.upgrade_sock),
        ("server.log_format", a.log_format != b.log_format),
        ("server.log_level", a.log_level != b.log_level),
        ("admin.listen", old.admin_listen != new.admin_listen),
        ("tracing", old.tracing != new.tracing),
    ];
    checks
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
}

#[async_trait]
impl BackgroundService for Reloader {
    /// Reloads on every `SIGHUP` until shutdown. Registering the handler is what keeps
    /// `SIGHUP` from killing the process (its default action).
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload is unavailable: {e}");
                return;
            }
        };
        // Now (after pingora's bootstrap, so an upgrade has its sockets, and after daemonizing)
        // this process may be named: `batchgate reload` finds it through this file.
        if let Err(e) = crate::instance::write_pid_file(&self.pid_file, &self.path) {
            tracing::warn!(pid_file = %self.pid_file.display(), "cannot write the pid file, batchgate reload will not find this instance: {e}");
        }
        loop {
            tokio::select! {
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    // This service has its own runtime: reading and validating the file
                    // here blocks no request.
                    self.reload();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
