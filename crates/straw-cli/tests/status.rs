//! The real `straw status` command against a client running in this
//! process (its server unreachable, so it keeps dialling): `--json` parses
//! as a snapshot, the text screen shows the link and money lines, and with
//! no client it fails in one line with exit status 1.
#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use straw::link::keys;
use straw::status::Snapshot;

fn straw_status(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_straw"))
        .arg("status")
        .args(args)
        .output()
        .unwrap()
}

fn write_key(dir: &Path, name: &str) {
    let kp = keys::generate();
    let key = dir.join(name);
    std::fs::write(&key, keys::encode_key(&kp.private)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.join(format!("{name}.pub")),
        keys::encode_key(&kp.public),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn straw_status_json_and_text_against_a_running_client() {
    let dir = std::env::temp_dir().join(format!("straw-cli-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_key(&dir, "client.key");
    write_key(&dir, "server.key");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = dead.local_addr().unwrap();
    drop(dead);
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.join("client.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{server}\"\nserver_public_key = \"server.key.pub\"\nprivate_key = \"client.key\"\n\
             [cache]\npersist = false\n[partial]\nenabled = false\n\
             [control]\nsocket = \"control.sock\"\n\
             [link]\ncost_per_minute = 1.25\n\
             [[service]]\nname = \"pop3\"\nprotocol = \"pop3\"\nlisten = \"{local}\"\n"
        ),
    )
    .unwrap();
    let cfg = straw::config::ClientConfig::load(&config).unwrap();
    let stats = Arc::new(straw::tunnel::TunnelStats::default());
    let client = tokio::spawn(straw::client::run_with_stats(cfg, stats));
    let sock = dir.join("control.sock");
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let cfg_arg = config.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || straw_status(&["--config", &cfg_arg, "--json"]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Snapshot = serde_json::from_slice(&out.stdout).expect("--json is a snapshot");
    assert_eq!(s.server, server.to_string());
    assert_eq!(s.money.cost_per_minute, 1.25);
    assert!(s.streams.is_empty());

    let sock_arg = sock.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || straw_status(&["--socket", &sock_arg]))
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(text.contains("link   "), "{text}");
    assert!(text.contains("money  "), "{text}");
    assert!(!text.contains('\x1b'), "no ANSI codes when not a terminal");

    client.abort();
    let _ = client.await;
    // The client's task is gone: the socket goes with it.
    assert!(!sock.exists(), "control socket left behind");
    let sock_arg = sock.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || straw_status(&["--socket", &sock_arg, "--json"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no straw client is running"), "{err}");
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
