//! README's main command, `batchgate demo -c conf/batchgate.toml`: the annotated config with
//! the built-in demo upstream answers every example it prints (an envelope batch, a JSON-RPC
//! batch, an id-list fan-out and a pass-through call). Only the ports are changed, to free ones.

use crate::common;

use common::upstream::free_port;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Demo {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every example the demo prints is answered by the demo upstream through batchgate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_answers_every_example_it_prints() {
    let demo = start_demo("conf/batchgate.toml").await;
    let addr = demo.addr();

    let envelope = r#"{"resource":"file","requests":[{"id":"93433894994ad2e1","method":"POST","url":"/file/get","headers":{"Content-Type":"application/json"},"body":{"domain_id":"1","drive_id":"1"}},{"id":"2","method":"POST","url":"/file/list","body":{"drive_id":"1"}}]}"#;
    let reply = common::client::post_json(addr, "/v2/batch", envelope).await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let json = reply.json();
    assert_eq!(json["responses"][0]["status"], 200, "{json}");
    assert_eq!(json["responses"][0]["body"]["name"], "demo.txt", "{json}");
    assert_eq!(
        json["responses"][1]["body"]["items"][1]["name"], "photos",
        "{json}"
    );

    let rpc = r#"[{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":"1"},{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":2}]"#;
    let reply = common::client::post_json(addr, "/jsonrpc", rpc).await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let json = reply.json();
    assert_eq!(json[0]["result"], 7, "{json}");
    assert_eq!(json[1]["result"], 19, "{json}");

    let fanout = "/v2/servicerequest/accessorys/access-urls?group_id=1&accessory_ids=1,2";
    let reply =
        common::client::request(addr, "GET", fanout, &[("X-Auth-Token", "demo")], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    assert!(
        reply.body_str().contains("https://files.demo.invalid/1/2"),
        "{}",
        reply.body_str()
    );

    let reply = common::client::get(addr, "/v2/hello").await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    assert!(
        reply.body_str().contains("from the demo upstream"),
        "{}",
        reply.body_str()
    );
}

/// `batchgate demo -c conf/examples/upstream-batching.toml`: the demo upstream takes the
/// arrays the example gathers, and a single call and a client's own array come back answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_the_upstream_batching_example() {
    let demo = start_demo("conf/examples/upstream-batching.toml").await;
    let addr = demo.addr();
    let single = r#"{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":7}"#;
    let reply = common::client::post_json(addr, "/rpc", single).await;
    assert_eq!(
        reply.json(),
        serde_json::json!({"jsonrpc": "2.0", "result": 3, "id": 7})
    );
    let array = r#"[{"jsonrpc":"2.0","method":"subtract","params":[5,1],"id":1},{"jsonrpc":"2.0","method":"get_data","id":"b"}]"#;
    let reply = common::client::post_json(addr, "/rpc", array).await;
    let json = reply.json();
    assert_eq!(json[0]["result"], 4, "{json}");
    assert_eq!(json[1]["id"], "b", "{json}");
    let one = "/v2/servicerequest/accessorys/42/access-url?group_id=7";
    let reply = common::client::request(addr, "GET", one, &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    assert_eq!(
        reply.json(),
        serde_json::json!({"url": "https://files.demo.invalid/7/42"})
    );
    let missing = "/v2/servicerequest/accessorys/404/access-url?group_id=7";
    let reply = common::client::request(addr, "GET", missing, &[], b"").await;
    assert_eq!(reply.status, 404, "{}", reply.body_str());
}

/// `batchgate demo -c FILE` prints a line per route of FILE (and a pass-through call), and
/// every line works: run as printed (with curl, through sh), each is answered 200 and each
/// route counts a batch whose items all succeeded. For every shipped config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_working_line_for_every_route_of_every_shipped_config() {
    let Some(curl) = common::prom::require_tool("curl", "apt-get install curl") else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("conf/batchgate.toml")];
    let mut examples: Vec<_> = std::fs::read_dir(root.join("conf/examples"))
        .expect("conf/examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    files.extend(examples);
    for file in files {
        let relative = file.strip_prefix(root).expect("in the repository");
        let mut demo = start_demo(&relative.display().to_string()).await;
        let stdout = demo.stdout.take().expect("stdout");
        let printed = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.expect("a line");
                let last = line.contains("/v2/hello");
                lines.push(line);
                if last {
                    break;
                }
            }
            lines
        })
        .await
        .expect("the demo's hints");
        let config = demo.config.clone();
        let commands: Vec<&str> = printed
            .iter()
            .filter_map(|l| l.strip_prefix("  "))
            .filter(|l| l.contains("curl "))
            .collect();
        let name = file.display();
        let routes = config.lines().filter(|l| *l == "[[routes]]").count();
        assert_eq!(
            commands.len(),
            routes + 1,
            "{name}: a line per route and pass-through: {printed:#?}"
        );
        for command in &commands {
            let script = command.replacen(
                "curl ",
                &format!("{} -o /dev/null -w '%{{http_code}}' ", curl.display()),
                1,
            );
            let out = run_sh(&script);
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(code, "200", "{name}: {command}");
        }
        let admin: std::net::SocketAddr =
            format!("127.0.0.1:{}", demo.admin).parse().expect("addr");
        let metrics =
            common::prom::scrape_until(admin, Duration::from_secs(5), "batches counted", |s| {
                s.sum("batchgate_batches_total", &[]) >= routes as f64
            })
            .await;
        let names = config
            .split("\n[[routes]]\n")
            .skip(1)
            .filter_map(|r| r.lines().find_map(|l| l.strip_prefix("name = \"")))
            .filter_map(|n| n.split('"').next());
        for route in names {
            assert_eq!(
                metrics.sum(
                    "batchgate_batches_total",
                    &[("route", route), ("outcome", "ok")]
                ),
                1.0,
                "{name}: route {route}: {}",
                metrics.text
            );
        }
    }
}

/// Runs a pasted command line with sh; once more if curl could not complete the exchange at
/// all (seen, rarely, with several demos starting at once on this 2-core machine; a wrong
/// answer is never retried).
fn run_sh(script: &str) -> std::process::Output {
    let run = || {
        Command::new("sh")
            .args(["-c", script])
            .output()
            .expect("sh")
    };
    let out = run();
    if out.status.success() {
        return out;
    }
    std::thread::sleep(Duration::from_millis(200));
    run()
}

/// `$ command` lines of a ```console block and the output shown under each.
fn console_samples(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines().map(str::trim) {
        if let Some(command) = line.strip_prefix("$ ") {
            out.push((command.to_string(), String::new()));
        } else if let Some((_, shown)) = out.last_mut() {
            if !line.is_empty() {
                shown.push_str(line);
                shown.push('\n');
            }
        }
    }
    out
}

/// The ```console blocks of README.md, in order.
fn readme_console_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    readme
        .split("```console\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(str::to_string)
        .collect()
}

/// A running `batchgate demo`: its ports, the config it runs, what it prints.
struct Running {
    listen: u16,
    admin: u16,
    config: String,
    stdout: Option<std::process::ChildStdout>,
    _demo: Demo,
}

impl Running {
    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.listen))
    }
}

/// Runs `batchgate demo -c FILE` (relative to the repository) with only its ports and files
/// changed (free ports; an admin listener added if it has none, to tell when it is ready),
/// once the demo upstream behind it answers too.
async fn start_demo(file: &str) -> Running {
    let (listen, admin, upstream) = (free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("batchgate-demo-{}-{listen}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pid = dir.join("batchgate.pid").display().to_string();
    let sock = dir.join("upgrade.sock").display().to_string();
    let mut config = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
        .expect("config")
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{listen}"))
        .replace("0.0.0.0:8443", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:9091", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{upstream}"))
        .replace("/tmp/batchgate.pid", &pid)
        .replace("/tmp/batchgate_upgrade.sock", &sock);
    if !config.contains("pid_file") {
        config = config.replacen(
            "[server]\n",
            &format!("[server]\npid_file = \"{pid}\"\nupgrade_sock = \"{sock}\"\n"),
            1,
        );
    }
    if !config.contains("\n[admin]\n") {
        config.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, &config).expect("config");
    let mut child = Command::new(common::gate::bin())
        .args(["demo", "-c"])
        .arg(&path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take();
    let demo = Demo { child, dir };
    let ready: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    common::eventually_async(
        Duration::from_secs(20),
        "the demo is ready",
        || async move {
            tokio::net::TcpStream::connect(ready).await.is_ok()
                && common::client::get(ready, "/readyz").await.status == 200
        },
    )
    .await;
    Running {
        listen,
        admin,
        config,
        stdout,
        _demo: demo,
    }
}

/// Each `$ curl` sample of a README console block, run against the demo, prints what the
/// README shows (the `date` headers aside).
fn assert_samples(block: &str, listen: u16, curl: &std::path::Path) {
    let date = |text: &str| {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("\"date\":\"") {
            out.push_str(&rest[..at]);
            out.push_str("\"date\":\"-\"");
            let after = &rest[at + 8..];
            rest = after.split_once('"').map_or("", |(_, r)| r);
        }
        out.push_str(rest);
        out
    };
    let samples = console_samples(block);
    assert!(!samples.is_empty(), "{block}");
    for (command, shown) in samples {
        let script = command
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{listen}"))
            .replacen("curl ", &format!("{} ", curl.display()), 1);
        let out = run_sh(&script);
        let printed = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        assert_eq!(
            date(&printed),
            date(shown.trim_end()),
            "README sample: $ {command} (sh: {})",
            out.status
        );
    }
}

/// README's sample outputs are what batchgate prints: the Quick start's curl lines against
/// `demo`, the walkthrough's config (conf/examples/minimal.toml), its `check` output and its
/// curl lines against `demo -c conf/examples/minimal.toml`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_samples_are_what_batchgate_prints() {
    let Some(curl) = common::prom::require_tool("curl", "apt-get install curl") else {
        return;
    };
    let blocks = readme_console_blocks();
    assert_eq!(blocks.len(), 3, "Quick start, check, walkthrough");

    let demo = start_demo("conf/batchgate.toml").await;
    assert_samples(&blocks[0], demo.listen, &curl);

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let shown_config = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the walkthrough's config");
    let minimal = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/examples/minimal.toml"
    ))
    .expect("minimal.toml");
    assert!(
        minimal.ends_with(shown_config),
        "README shows conf/examples/minimal.toml"
    );

    let check = Command::new(common::gate::bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "-c", "conf/examples/minimal.toml"])
        .output()
        .expect("check");
    let printed =
        String::from_utf8_lossy(&check.stdout).replace("conf/examples/minimal.toml", "my.toml");
    for line in blocks[1].lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            printed.lines().any(|p| p == line),
            "README check sample {line:?} in:\n{printed}"
        );
    }

    let demo = start_demo("conf/examples/minimal.toml").await;
    assert_samples(&blocks[2], demo.listen, &curl);
}
