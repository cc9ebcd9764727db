//! Server wiring: turns a validated `Config` into a pingora `Server` with its services.
//!
//! The proxy service listens on `server.listen`, the admin app on `admin.listen`, and in demo
//! mode the demo upstream on the default upstream's address. pingora owns the runtimes,
//! signals (SIGTERM graceful stop, SIGQUIT zero-downtime upgrade) and, in daemon mode, the
//! pid file; SIGHUP reloads the config in place (`crate::reload`).

use crate::admin::{readiness_target, AdminApp, ReadinessTarget};
use crate::config::Config;
use crate::demo::DemoUpstream;
use crate::listener::{Listener, Listeners, Workers};
use crate::proxy::BatchGate;
use crate::reload::Reloader;
use crate::upstream::health::HealthChecker;
use crate::upstream::UpstreamClients;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to start: flags that map onto pingora's own options.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    /// Take over listeners from a running instance (zero-downtime upgrade).
    pub upgrade: bool,
    /// Run in the background.
    pub daemon: bool,
    /// Also serve the built-in demo upstream on this address.
    pub demo_upstream: Option<SocketAddr>,
}

/// How long before the end of the grace period running batches are told to answer: enough to
/// encode and write a reply.
const STOP_MARGIN: Duration = Duration::from_millis(500);

/// Tells running batches to answer with what they have shortly before pingora's grace period
/// ends; without it a batch longer than the grace period is cut off with no reply at all.
pub struct ShutdownNotice {
    stop: tokio::sync::watch::Sender<bool>,
    /// Time from the start of the shutdown to the stop signal.
    lead: Duration,
}

#[async_trait]
impl BackgroundService for ShutdownNotice {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|down| *down).await.is_err() {
            return;
        }
        tokio::time::sleep(self.lead).await;
        let _ = self.stop.send(true);
    }
}

/// How pingora's HTTP server treats connections: h2c with prior knowledge on cleartext
/// listeners when asked, and idle HTTP/2 connections closed like idle HTTP/1.1 ones.
fn http_options(config: &Config) -> pingora::apps::HttpServerOptions {
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = config.server.h2c;
    options.h2_idle_timeout = Some(config.server.client.idle_timeout);
    options
}

/// HTTP/2 clients: pingora's bounded defaults (64 KiB of headers) with our stream cap, so one
/// connection holds at most `client_max_h2_streams` requests (and their bodies) at once.
fn h2_options(config: &Config) -> pingora::protocols::http::v2::server::H2Options {
    let mut options = pingora::protocols::http::v2::server::default_h2_options();
    let streams = u32::try_from(config.server.client.max_h2_streams).unwrap_or(u32::MAX);
    options.max_concurrent_streams(streams);
    options
}

/// Builds the pingora server with every service; the caller runs it. `path` is the file
/// `config` came from: SIGHUP reloads it.
pub fn build(config: Config, path: &Path, options: &StartOptions) -> Server {
    let conf = pingora_conf(&config);
    let pid_file = PathBuf::from(&conf.pid_file);
    let mut server = Server::new_with_opt_and_conf(pingora_opt(options), conf);
    server.bootstrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let gate = BatchGate::new(&config, stop_rx);
    let reconfigure = gate.reconfigure();
    add_proxy(&mut server, &config, gate);
    server.add_service(background_service(
        "batchgate shutdown notice",
        ShutdownNotice {
            stop,
            lead: config.server.grace_period.saturating_sub(STOP_MARGIN),
        },
    ));
    let readiness: ReadinessTarget =
        Arc::new(ArcSwapOption::from_pointee(readiness_target(&config)));
    let live = reconfigure.clone();
    let upstreams: UpstreamClients = Arc::new(move || live.upstream_clients());
    let live = reconfigure.clone();
    let routes: crate::admin::status::Routes = Arc::new(move || live.route_configs());
    if let Some(addr) = config.admin_listen {
        server.add_service(admin_service(
            &config,
            addr,
            readiness.clone(),
            upstreams.clone(),
            routes,
        ));
    }
    server.add_service(background_service(
        "batchgate health checks",
        HealthChecker { clients: upstreams },
    ));
    if let Some(addr) = options.demo_upstream {
        server.add_service(one_thread_service(
            "batchgate demo upstream",
            DemoUpstream,
            addr,
        ));
    }
    server.add_service(background_service(
        "batchgate reload",
        Reloader::new(path.to_path_buf(), pid_file, reconfigure, readiness, config),
    ));
    server
}

/// Every address this process listens on: the public and TLS listeners, the admin listener
/// and the demo upstream.
pub fn listen_addresses(config: &Config, options: &StartOptions) -> Vec<SocketAddr> {
    public_listeners(config)
        .copied()
        .chain(config.admin_listen)
        .chain(options.demo_upstream)
        .collect()
}

/// The pid file `config` names (pingora's default when it names none).
pub fn pid_file(config: &Config) -> String {
    pingora_conf(config).pid_file
}

fn pingora_conf(config: &Config) -> ServerConf {
    let mut conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout.as_secs()),
        upstream_keepalive_pool_size: passthrough_pool_size(config),
        ..ServerConf::default()
    };
    if let Some(pid_file) = &config.server.pid_file {
        conf.pid_file = pid_file.clone();
    }
    if let Some(sock) = &config.server.upgrade_sock {
        conf.upgrade_sock = sock.clone();
    }
    conf
}

/// Idle pass-through connections per thread: the default upstream's `pool_size` for each of
/// its addresses, as items keep (pingora multiplies it by `threads`). Sized at start; a reload
/// that grows the pool or adds addresses takes effect at the next restart or upgrade.
fn passthrough_pool_size(config: &Config) -> usize {
    const PINGORA_DEFAULT: usize = 128;
    config
        .default_upstream
        .as_ref()
        .map_or(PINGORA_DEFAULT, |upstream| {
            upstream.pool_size.saturating_mul(upstream.addresses.len())
        })
}

fn pingora_opt(options: &StartOptions) -> Opt {
    Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Opt::default()
    }
}

/// The proxy on every cleartext and TLS listener. Every client connection is counted,
/// capped, given read deadlines and, on TLS listeners, its handshake (`listener.rs`).
///
/// Without work stealing and with more than one thread, the listeners are in a one-thread
/// acceptor and every connection is served by one of `threads` workers, each with its own
/// app, connector and pass-through pool (`listener/workers.rs`); otherwise one service runs
/// `threads` threads (one shared pool).
fn add_proxy(server: &mut Server, config: &Config, gate: BatchGate) {
    let listeners = Listeners {
        plain: &config.server.listen,
        tls: &config.server.tls_listen,
        tls_settings: config.server.tls.as_ref(),
        h2c: config.server.h2c,
    };
    let limits = config.server.client;
    let threads = config.server.threads;
    let lane: Arc<dyn crate::listener::Lane> = Arc::new(gate.lane());
    if config.server.work_stealing || threads <= 1 {
        let app = proxy_app(&server.configuration, config, gate);
        let listener = Listener::new(app, limits, listeners).with_lane(lane);
        server.add_service(listening_service(listener, config, None));
        return;
    }
    // Each worker's connector is sized for the one thread that uses it (pingora multiplies
    // `upstream_keepalive_pool_size` by `threads`).
    let mut one_thread = pingora_conf(config);
    one_thread.threads = 1;
    let one_thread = Arc::new(one_thread);
    let apps = (0..threads)
        .map(|_| proxy_app(&one_thread, config, gate.clone()))
        .collect();
    let workers = Workers::new(apps);
    let worker_services: Vec<_> = workers
        .services()
        .into_iter()
        .enumerate()
        .map(|(i, worker)| {
            let mut service =
                GenBackgroundService::new(format!("batchgate worker {i}"), Arc::new(worker));
            service.threads = Some(1);
            server.add_service(service)
        })
        .collect();
    let listener = Listener::with_workers(workers, limits, listeners).with_lane(lane);
    let acceptor = server.add_service(listening_service(listener, config, Some(1)));
    for worker in &worker_services {
        acceptor.add_dependency(worker);
    }
}

/// The app behind the public listeners.
type ProxyApp = pingora::proxy::HttpProxy<BatchGate>;

/// pingora's proxy over `gate`, with batchgate's HTTP/1 and HTTP/2 server options.
fn proxy_app(conf: &Arc<ServerConf>, config: &Config, gate: BatchGate) -> ProxyApp {
    let mut app = pingora::proxy::http_proxy(conf, gate);
    app.server_options = Some(http_options(config));
    app.h2_options = Some(h2_options(config));
    app
}

/// The service holding the public listeners, on `threads` threads (default: the server's).
fn listening_service(
    listener: Listener<ProxyApp>,
    config: &Config,
    threads: Option<usize>,
) -> Service<Listener<ProxyApp>> {
    let mut proxy = Service::new("batchgate proxy".to_string(), listener);
    for addr in public_listeners(config) {
        proxy.add_tcp(&addr.to_string());
    }
    proxy.threads = threads;
    proxy
}

fn public_listeners(config: &Config) -> impl Iterator<Item = &SocketAddr> {
    config.server.listen.iter().chain(&config.server.tls_listen)
}

/// Open connections the admin listener takes: scrapers and probes need a handful, and idle
/// ones beyond it must not take the descriptors the public listeners need.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The admin app on its own listener and thread, its connections capped and given the same
/// read deadlines as the public ones.
fn admin_service(
    config: &Config,
    addr: SocketAddr,
    readiness: ReadinessTarget,
    upstreams: UpstreamClients,
    routes: crate::admin::status::Routes,
) -> impl pingora::services::Service {
    let app = AdminApp {
        listeners: public_listeners(config).copied().collect(),
        default_upstream: readiness,
        upstreams,
        routes,
    };
    let limits = crate::config::ClientLimits {
        max_connections: ADMIN_MAX_CONNECTIONS,
        ..config.server.client
    };
    let addrs = [addr];
    let listener = Listener::new(
        HttpServer::new_app(app),
        limits,
        Listeners {
            plain: &addrs,
            tls: &[],
            tls_settings: None,
            h2c: false,
        },
    );
    let mut service = Service::new("batchgate admin".to_string(), listener);
    service.add_tcp(&addr.to_string());
    service.threads = Some(1);
    service
}

/// A small HTTP app on one address with one thread of its own.
fn one_thread_service<A: pingora::apps::http_app::ServeHttp + Send + Sync + 'static>(
    name: &str,
    app: A,
    addr: SocketAddr,
) -> impl pingora::services::Service {
    let mut service = Service::new(name.to_string(), HttpServer::new_app(app));
    service.add_tcp(&addr.to_string());
    service.threads = Some(1);
    service
}
