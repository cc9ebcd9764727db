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
    let (listen, admin, upstream) = (free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("batchgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/batchgate.toml"))
            .expect("conf/batchgate.toml")
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{listen}"))
            .replace("127.0.0.1:9091", &format!("127.0.0.1:{admin}"))
            .replace("127.0.0.1:9000", &format!("127.0.0.1:{upstream}"))
            .replace(
                "/tmp/batchgate.pid",
                &dir.join("batchgate.pid").display().to_string(),
            )
            .replace(
                "/tmp/batchgate_upgrade.sock",
                &dir.join("upgrade.sock").display().to_string(),
            );
    let path = dir.join("batchgate.toml");
    std::fs::write(&path, config).expect("config");
    let child = Command::new(common::gate::bin())
        .args(["demo", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let _demo = Demo { child, dir };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{listen}").parse().expect("addr");
    common::eventually_async(Duration::from_secs(20), "the demo accepts", || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;

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
    let (listen, admin, upstream) = (free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("batchgate-demo-ub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/examples/upstream-batching.toml"
    ))
    .expect("the example")
    .replace("0.0.0.0:8080", &format!("127.0.0.1:{listen}"))
    .replace("127.0.0.1:9091", &format!("127.0.0.1:{admin}"))
    .replace("127.0.0.1:9000", &format!("127.0.0.1:{upstream}"));
    let path = dir.join("batchgate.toml");
    std::fs::write(&path, config).expect("config");
    let child = Command::new(common::gate::bin())
        .args(["demo", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let _demo = Demo { child, dir };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{listen}").parse().expect("addr");
    common::eventually_async(Duration::from_secs(20), "the demo accepts", || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
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
