//! The `batchgate` command line: `run`, `check` and `demo`. Parses arguments, sets up
//! logging, loads the config and hands over to `server`; nothing else lives here.

use anyhow::Context;
use batchgate::config::Config;
use batchgate::instance;
use batchgate::server::{self, StartOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the per-item path allocates small buffers on every
/// worker thread, and glibc's arena locks and consolidation were ~20% of batchgate's CPU in
/// the load benchmark's profile (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The example config `demo` uses when no `-c` is given.
const DEMO_CONFIG: &str = "conf/batchgate.toml";

/// The config the other commands use when no `-c` is given (and `BATCHGATE_CONFIG` is unset):
/// where the Dockerfile, the Kubernetes manifests and the systemd unit put it.
const DEFAULT_CONFIG: &str = "/etc/batchgate/batchgate.toml";

#[derive(Parser)]
#[command(
    name = "batchgate",
    version,
    about = "A batch-unpacking reverse proxy built on pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        #[arg(short, long, env = "BATCHGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take over the listeners of a running batchgate (zero-downtime upgrade; send the
        /// old process SIGQUIT).
        #[arg(short, long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate a config file and print a summary; exit 1 on any problem.
    Check {
        #[arg(short, long, env = "BATCHGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Check upstream host names for their form only, without resolving them (a config
        /// for another network, such as a Kubernetes cluster's service names).
        #[arg(long)]
        no_resolve: bool,
        /// Print the effective config instead of the summary: the file with every key it
        /// leaves out written in with the value in effect (marked `# default`).
        #[arg(long)]
        print: bool,
    },
    /// Print shell completions for batchgate (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print batchgate's man page (roff), e.g. `batchgate man > batchgate.1`.
    Man,
    /// Print the JSON Schema of the config file (what conf/batchgate.schema.json holds).
    Schema,
    /// Validate a config file, then tell the running instance serving it (found through the
    /// file's pid_file, and verified) to reload it in place (SIGHUP); exit 1 without
    /// signalling if the file is invalid or no batchgate serves it.
    Reload {
        #[arg(short, long, env = "BATCHGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the pid of the running batchgate serving a config file (from its pid_file, and
    /// verified); exit 1 with the reason if none does. For upgrades: name the old process
    /// before the new one rewrites the pid file.
    Pid {
        #[arg(short, long, env = "BATCHGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run the proxy plus a built-in demo upstream on the default upstream's address.
    Demo {
        #[arg(short, long, default_value = DEMO_CONFIG)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            no_resolve,
            print,
        } => check(&config, no_resolve, print),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "batchgate", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => man(),
        Command::Schema => {
            use std::io::Write;
            let schema = batchgate::config::file::schema();
            let text = serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n";
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Command::Reload { config } => reload(&config),
        Command::Pid { config } => print_pid(&config),
        Command::Run {
            config,
            upgrade,
            daemon,
        } => run(
            &config,
            StartOptions {
                upgrade,
                daemon,
                demo_upstream: None,
            },
        ),
        Command::Demo { config } => demo(&config),
    }
}

fn man() -> ExitCode {
    let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
    let mut out = Vec::new();
    if page.render(&mut out).is_err() {
        return ExitCode::FAILURE;
    }
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(&out);
    ExitCode::SUCCESS
}

fn check(path: &std::path::Path, no_resolve: bool, print: bool) -> ExitCode {
    let resolve = if no_resolve {
        batchgate::config::Resolve::SyntaxOnly
    } else {
        batchgate::config::Resolve::Names
    };
    match Config::from_path_with(path, resolve) {
        Ok(config) => {
            // write! rather than print!: a closed pipe (`| head`) must not panic.
            use std::io::Write;
            for warning in &config.warnings {
                eprintln!("{warning}");
            }
            let resolved = if no_resolve {
                " (host names not resolved)"
            } else {
                ""
            };
            let text = if print {
                let written = std::fs::read_to_string(path).unwrap_or_default();
                batchgate::config::effective_text(&written, &config.filled)
            } else {
                format!("{}: ok{resolved}\n{}", path.display(), summary(&config))
            };
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the file like `check`, then sends SIGHUP to the batchgate that its pid file names,
/// once `instance::find` has verified that it is one and that it serves this very file. The
/// running instance validates the file again itself (it may have changed in between) and logs
/// and counts the outcome.
fn reload(path: &std::path::Path) -> ExitCode {
    let config = match Config::from_path(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}\nnot reloaded: the running instance keeps its config");
            return ExitCode::FAILURE;
        }
    };
    let pid_file = server::pid_file(&config);
    let sent = instance::find(pid_file.as_ref(), path)
        .map_err(|why| format!("{why}\nnot reloaded: nothing was signalled"))
        .and_then(|instance| {
            let pid = instance.pid;
            instance
                .hang_up()
                .map(|()| pid)
                .map_err(|e| format!("cannot signal pid {pid} (from {pid_file}): {e}"))
        });
    match sent {
        Ok(pid) => {
            println!("{}: ok, sha256 {}\nsent SIGHUP to pid {pid}; the result is in its log and in batchgate_config_reloads_total", path.display(), config.sha256);
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("{why}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the verified pid of the batchgate serving `path`.
fn print_pid(path: &std::path::Path) -> ExitCode {
    let config = match Config::from_path(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match instance::find(server::pid_file(&config).as_ref(), path) {
        Ok(instance) => {
            println!("{}", instance.pid);
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("{why}");
            ExitCode::FAILURE
        }
    }
}

/// What `check` prints after "ok": listeners, upstreams and routes as batchgate sees them.
fn summary(config: &Config) -> String {
    let mut out = format!("sha256 {}\n", config.sha256);
    listener_lines(config, &mut out);
    upstream_lines(config, &mut out);
    route_lines(config, &mut out);
    tracing_line(config, &mut out);
    out
}

fn listener_lines(config: &Config, out: &mut String) {
    let h2c = if config.server.h2c {
        " (HTTP/1.1, h2c)"
    } else {
        ""
    };
    for addr in &config.server.listen {
        out.push_str(&format!("listener {addr}{h2c}\n"));
    }
    let alpn = match &config.server.tls {
        Some(tls) if tls.http2 => " (TLS; h2, HTTP/1.1)",
        _ => " (TLS; HTTP/1.1)",
    };
    for addr in &config.server.tls_listen {
        out.push_str(&format!("listener {addr}{alpn}\n"));
    }
    if let Some(addr) = config.admin_listen {
        out.push_str(&format!(
            "admin    {addr} (/metrics /healthz /readyz /status)\n"
        ));
    }
}

fn upstream_lines(config: &Config, out: &mut String) {
    for upstream in &config.upstreams {
        let is_default = config
            .default_upstream
            .as_ref()
            .is_some_and(|d| std::sync::Arc::ptr_eq(d, upstream));
        let default = if is_default {
            " (default, pass-through)"
        } else {
            ""
        };
        // As written, and where a name resolved to (unresolved names keep a 0.0.0.0 stand-in).
        let addrs: Vec<String> = upstream
            .address_names
            .iter()
            .zip(&upstream.addresses)
            .map(|(name, addr)| {
                let resolved = addr.to_string();
                if *name == resolved || addr.ip().is_unspecified() {
                    name.clone()
                } else {
                    format!("{name} ({resolved})")
                }
            })
            .collect();
        let tls = match &upstream.tls {
            Some(tls) if !tls.verify => format!(" tls sni={} (NOT VERIFIED)", tls.sni),
            Some(tls) => format!(" tls sni={}", tls.sni),
            None => String::new(),
        };
        out.push_str(&format!(
            "upstream {} -> {}{tls}{default}\n",
            upstream.name,
            addrs.join(", ")
        ));
    }
}

fn tracing_line(config: &Config, out: &mut String) {
    if let Some(tracing) = &config.tracing {
        out.push_str(&format!(
            "tracing  OTLP/HTTP to {}, sampling {}, queue {} spans\n",
            tracing.endpoint, tracing.sampling_ratio, tracing.max_queued_spans
        ));
    }
}

fn route_lines(config: &Config, out: &mut String) {
    for route in &config.routes {
        let upstream = &route.upstream.name;
        out.push_str(&format!(
            "route    {} {} dialect={} upstream={} max_items={} concurrency={}\n",
            route.name,
            route.path,
            route.dialect.name(),
            upstream,
            route.limits.max_items,
            route.limits.concurrency
        ));
        if let Some(batching) = &route.upstream_batching {
            out.push_str(&format!(
                "         upstream batching: up to {} calls per array, max_wait {:?}\n",
                batching.max_items, batching.max_wait
            ));
        }
        if let Some(limit) = &route.rate_limit {
            let store = match limit.store {
                batchgate::config::rate_limit::StoreKind::Local => "local",
                batchgate::config::rate_limit::StoreKind::Redis => "redis",
            };
            out.push_str(&format!(
                "         rate limit {} items/s per client, burst {}, store {store}\n",
                limit.items_per_second, limit.burst
            ));
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::from_path(path)?;
    batchgate::logs::init(&config).context("setting up logging")?;
    Ok(config)
}

fn run(path: &std::path::Path, options: StartOptions) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    serve(config, path, &options)
}

/// Claims the listeners, then runs the server until it stops. Every way out that is not a
/// clean stop is one line on stderr and a non-zero exit, before the process reports anything
/// (`/readyz` lists only listeners that are bound).
fn serve(config: Config, path: &std::path::Path, options: &StartOptions) -> ExitCode {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let addrs = server::listen_addresses(&config, options);
    // An upgrade takes its sockets over from the running process, which holds them.
    if !options.upgrade {
        if let Err(line) = instance::check_can_listen(&addrs) {
            eprintln!("{line}");
            return ExitCode::FAILURE;
        }
    }
    let pid_file = std::path::PathBuf::from(server::pid_file(&config));
    exit_when_a_listener_fails(pid_file.clone());
    let path = instance::absolute(path);
    let listening: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    tracing::info!(config = %path.display(), listeners = ?listening, "batchgate starting");
    server::build(config, &path, options).run(pingora::server::RunArgs::default());
    instance::remove_pid_file(&pid_file);
    ExitCode::SUCCESS
}

/// pingora builds each listening service in its own runtime, and a bind that fails there
/// panics one thread while the rest of the process serves on. Such a panic ends the process
/// with the one line that says why.
fn exit_when_a_listener_fails(pid_file: std::path::PathBuf) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(line) = instance::listener_failure(message) {
            eprintln!("{line}");
            instance::remove_pid_file(&pid_file);
            std::process::exit(1);
        }
        default_hook(info);
    }));
}

fn demo(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match demo_upstream(&config) {
        Ok(addr) => addr,
        Err(why) => {
            eprintln!("{}: {why}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let options = StartOptions {
        demo_upstream: Some(addr),
        ..StartOptions::default()
    };
    if let Err(line) = instance::check_can_listen(&server::listen_addresses(&config, &options)) {
        eprintln!("{line}");
        return ExitCode::FAILURE;
    }
    print_demo_help(&config, addr);
    serve(config, path, &options)
}

/// Where the demo serves its API: the default upstream's first address, which must be a
/// loopback one (the demo API is not for other hosts).
fn demo_upstream(config: &Config) -> Result<std::net::SocketAddr, String> {
    let upstream = config
        .default_upstream
        .as_ref()
        .ok_or("demo needs a default upstream to serve the demo API on")?;
    upstream
        .addresses
        .first()
        .copied()
        .filter(|a| a.ip().is_loopback())
        .ok_or_else(|| {
            format!(
                "demo serves its API only on a loopback address; upstream {} is not one",
                upstream.name
            )
        })
}

/// What to paste to try the demo.
fn print_demo_help(config: &Config, addr: std::net::SocketAddr) {
    let listen = config
        .server
        .listen
        .first()
        .map_or("127.0.0.1:8080".to_string(), |a| {
            if a.ip().is_unspecified() {
                format!("127.0.0.1:{}", a.port())
            } else {
                a.to_string()
            }
        });
    println!("batchgate demo: proxy on http://{listen}, demo upstream on http://{addr}");
    if let Some(admin) = config.admin_listen {
        println!("metrics on http://{admin}/metrics, status page on http://{admin}/status");
    }
    println!("Try:");
    for hint in batchgate::demo::hints::hints(config, &listen) {
        println!("# {}\n  {}", hint.what, hint.command);
    }
}
