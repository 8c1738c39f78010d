//! Issue 15: the `wshub` command line as an operator meets it: the Go hub's address forms, startup
//! errors as one line without a backtrace, logs without colour codes in a pipe, and the operator
//! subcommands (`gentoken`, `checkconfig`, `genkey`, `notify`) run as the real binary against a
//! real hub.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::json;

const SECRET: &str = "cli-test-secret";
const KEY: &str = "cli-test-api-key";

/// Runs the binary to completion with a clean `WSHUB_*` environment plus `env`.
fn wshub(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wshub"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("WSHUB_")) {
        command.env_remove(name);
    }
    command.args(args).envs(env.iter().copied()).stdin(Stdio::null()).output().expect("run wshub")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The error as the issue asks for it: one line naming the problem, non-zero, no backtrace.
fn assert_one_line_error(output: &Output, expected: &str) {
    let err = stderr(output);
    assert!(!output.status.success(), "should fail: {err}");
    assert!(err.contains(expected), "{expected:?} not in {err:?}");
    assert_eq!(err.trim_end().lines().filter(|l| !l.contains(" INFO ")).count(), 1, "one line: {err:?}");
    assert!(!err.contains("backtrace") && !err.contains("panicked") && !err.contains("Caused by"), "{err}");
}

#[test]
fn busy_port_is_one_line_without_a_backtrace() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = wshub(&["--addr", &addr], &[("RUST_BACKTRACE", "1")]);
    assert_one_line_error(&output, &format!("cannot listen on {addr}"));
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn unreadable_key_and_bad_config_are_one_line_each() {
    let env = [("RUST_BACKTRACE", "full")];
    let output = wshub(&["--addr", "127.0.0.1:0", "--jwt-public-key", "/nonexistent/key.pem"], &env);
    assert_one_line_error(&output, "/nonexistent/key.pem");
    assert_eq!(output.status.code(), Some(2));
    let output = wshub(&["--addr", "127.0.0.1:0", "--ping-interval", "2m"], &env);
    assert_one_line_error(&output, "--ping-interval");
    let dir = std::env::temp_dir().join(format!("wshub-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[namespaces.x\n").expect("write");
    let output = wshub(&["--addr", "127.0.0.1:0", "--config", bad.to_str().expect("path")], &env);
    assert_one_line_error(&output, "bad.toml");
    let output = wshub(&["--addr", "nowhere"], &env);
    assert!(stderr(&output).contains("127.0.0.1:0"), "{}", stderr(&output));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test]
async fn go_hub_address_forms_start_the_hub() {
    // `-addr` with one dash and `localhost:port`: how Go hub units and Dockerfiles start it.
    let port = free_port().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["-addr", &format!("localhost:{port}")])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let url = format!("http://127.0.0.1:{port}/health");
    let deadline = tokio::time::Instant::now() + WAIT;
    while reqwest::get(&url).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "hub on localhost:{port} never answered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().expect("kill");
    let output = child.wait_with_output().expect("wait");
    let log = stderr(&output);
    // stderr is a pipe here: no ANSI colour codes.
    assert!(log.contains("wshub listening") && !log.contains('\u{1b}'), "{log:?}");
}

#[tokio::test]
async fn gentoken_mints_a_token_the_running_hub_accepts() {
    let hub = ChildHub::start(&["--jwt-secret", SECRET]).await;
    let output = wshub(&["gentoken", "--sub", "42", "--role", "admin", "--ttl", "1h"], &[("WSHUB_JWT_SECRET", SECRET)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output);
    let mut client = Client::connect(&hub.ws_url(&format!("/ws?token={token}"))).await;
    let hello = client.next_json().await;
    assert_eq!(hello["type"], "hub:connected", "{hello}");
    assert_eq!(hello["user"], "42", "{hello}");
    assert!(hello["roles"].as_array().is_some_and(|r| r.contains(&json!("admin"))), "{hello}");

    let output = wshub(&["gentoken", "--sub", "42"], &[]);
    assert_one_line_error(&output, "--jwt-secret");
}

#[tokio::test]
async fn notify_publishes_with_the_hubs_own_environment() {
    let hub = ChildHub::start(&["--api-key", KEY]).await;
    let mut client = Client::connect(&hub.ws_url("/ws")).await;
    client.next_of("hub:connected").await;
    let addr = hub.addr.to_string();
    let args = ["notify", "deploy", "v2 is live", "--data", r#"{"version":2}"#];
    let output = tokio::task::spawn_blocking(move || wshub(&args, &[("WSHUB_ADDR", &addr), ("WSHUB_API_KEY", KEY)]))
        .await
        .expect("join");
    assert!(output.status.success(), "{}", stderr(&output));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json answer");
    assert_eq!(answer["success"], true);
    let event = client.next_of("deploy").await;
    assert_eq!(event["message"], "v2 is live");
    assert_eq!(event["data"]["version"], 2);

    // The hub's refusal is one line with its status and reason.
    let url = hub.url("");
    let (bad_data, refused) = tokio::task::spawn_blocking(move || {
        (
            wshub(&["notify", "x", "--url", &url, "--data", "[1"], &[]),
            wshub(&["notify", "x", "--url", &url], &[("WSHUB_API_KEY", "wrong")]),
        )
    })
    .await
    .expect("join");
    assert_one_line_error(&bad_data, "--data must be JSON");
    assert_one_line_error(&refused, "401");
}

#[test]
fn checkconfig_and_genkey() {
    let output = wshub(&["checkconfig"], &[("WSHUB_ADDR", ":8080"), ("WSHUB_JWT_SECRET", SECRET)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("configuration OK") && text.contains("0.0.0.0:8080") && text.contains("HS256"), "{text}");
    let output = wshub(&["checkconfig", "--require-auth"], &[]);
    assert_one_line_error(&output, "--require-auth needs --jwt-secret");

    let key = stdout(&wshub(&["genkey"], &[]));
    assert_eq!(key.len(), 64, "{key}");
    assert_ne!(key, stdout(&wshub(&["genkey"], &[])));
}
