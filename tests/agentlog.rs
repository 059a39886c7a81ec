//! The startup-log sender (`envbox::agentlog`) against a stand-in Coder (Coder cannot run
//! here): what it registers and sends, with which header, and how it rides out failures.

mod support;

use std::time::Duration;

use envbox::agentlog::{AgentLog, Target};
use envbox::config::{Purpose, RawSettings, Secret, Settings};
use envbox::progress::{self, Kind};
use support::coder::StandInCoder;

/// The target of `envbox docker` with this agent URL and a token.
fn target(url: &str) -> Target {
    let raw = RawSettings {
        image: Some("alpine".into()),
        username: Some("coder".into()),
        agent_url: Some(url.to_owned()),
        agent_token: Some(Secret::new("agent-token-never-logged")),
        ..Default::default()
    };
    let settings = Settings::from_raw(&raw, None, Purpose::Docker).unwrap();
    Target::from_settings(&settings).unwrap().unwrap()
}

/// The settings of `envbox docker` parsed from `args` as the binary parses them.
fn docker_settings(args: &[&str]) -> Settings {
    use clap::Parser;
    let mut all = vec![
        "envbox",
        "docker",
        "--image",
        "alpine",
        "--username",
        "coder",
    ];
    all.extend_from_slice(args);
    let cli = envbox::cli::Cli::try_parse_from(all).unwrap();
    let envbox::cli::Command::Docker(docker) = cli.command else {
        unreachable!()
    };
    Settings::from_raw(&docker.settings(), None, Purpose::Docker).unwrap()
}

/// The forwarder is process-wide: tests that start a sender take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn lines_are_sent_in_order_under_one_registered_source_with_the_token_header() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let coder = StandInCoder::start();
    let url = coder.url.clone();
    let log = AgentLog::start(target(&url));
    progress::emit(Kind::Info, "agentlog-test: pulling");
    progress::emit(Kind::Done, "agentlog-test: up");
    log.send(Kind::Error, "agentlog-test: failed");
    log.close(Duration::from_secs(5)).await;
    // After close nothing is forwarded any more.
    progress::emit(Kind::Info, "agentlog-test: after close");

    let seen = coder.received();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/api/v2/workspaceagents/me/log-source")
    );
    let source = seen[0].body["id"].as_str().unwrap().to_owned();
    assert_eq!(source.len(), 36, "a UUID: {source}");
    assert_eq!(seen[0].body["display_name"], "envbox");
    for request in &seen {
        assert_eq!(request.token.as_deref(), Some("agent-token-never-logged"));
    }
    let patches: Vec<_> = seen.iter().filter(|s| s.method == "PATCH").collect();
    assert!(!patches.is_empty());
    for patch in &patches {
        assert_eq!(patch.path, "/api/v2/workspaceagents/me/logs");
        assert_eq!(patch.body["log_source_id"], source.as_str());
    }
    let ours: Vec<String> = coder
        .outputs()
        .into_iter()
        .filter(|o| o.starts_with("agentlog-test"))
        .collect();
    assert_eq!(
        ours,
        [
            "agentlog-test: pulling",
            "agentlog-test: up",
            "agentlog-test: failed"
        ]
    );
    let levels: Vec<String> = patches
        .iter()
        .flat_map(|p| p.body["logs"].as_array().unwrap().clone())
        .filter(|l| l["output"].as_str().unwrap().starts_with("agentlog-test"))
        .map(|l| l["level"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(levels, ["info", "info", "error"]);
}

#[tokio::test]
async fn a_coder_that_fails_at_first_gets_every_line_later() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let coder = StandInCoder::misbehaving(2, false);
    let url = coder.url.clone();
    let log = AgentLog::start(target(&url));
    for i in 0..5 {
        log.send(Kind::Info, &format!("retry-test {i}"));
    }
    log.close(Duration::from_secs(10)).await;
    let ours: Vec<String> = coder
        .outputs()
        .into_iter()
        .filter(|o| o.starts_with("retry-test"))
        .collect();
    assert_eq!(ours.len(), 5, "{ours:?}");
    // Registration was retried until it succeeded, then kept.
    let registrations = coder
        .received()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(registrations, 3);
}

#[tokio::test]
async fn an_unreachable_coder_never_holds_up_the_close_beyond_its_deadline() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = AgentLog::start(target(&format!("http://127.0.0.1:{port}")));
    log.send(Kind::Info, "nobody hears this");
    let started = std::time::Instant::now();
    log.close(Duration::from_millis(700)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_full_agent_log_stops_the_sending_without_an_error() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let coder = StandInCoder::misbehaving(0, true);
    let url = coder.url.clone();
    let log = AgentLog::start(target(&url));
    log.send(Kind::Info, "first");
    tokio::time::sleep(Duration::from_millis(600)).await;
    log.send(Kind::Info, "second");
    log.close(Duration::from_secs(5)).await;
    // One refused PATCH, then nothing more is tried.
    let patches = coder
        .received()
        .iter()
        .filter(|s| s.method == "PATCH")
        .count();
    assert_eq!(patches, 1);
}

#[tokio::test]
async fn no_startup_log_sends_nothing_to_coder() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let coder = StandInCoder::start();
    let url = coder.url.clone();
    let with = |extra: &[&str]| {
        let mut args = vec!["--coder-url", url.as_str(), "--agent-token", "tok"];
        args.extend_from_slice(extra);
        docker_settings(&args)
    };
    // The flag as the Go envbox takes it: alone or with a value.
    for flag in ["--no-startup-log", "--no-startup-log=true"] {
        let settings = with(&[flag]);
        assert!(settings.no_startup_log);
        assert!(
            Target::from_settings(&settings).unwrap().is_none(),
            "{flag}"
        );
    }
    // Without it (or with it false), the same settings send: the stand-in hears the line.
    let settings = with(&["--no-startup-log=false"]);
    let log = AgentLog::start(Target::from_settings(&settings).unwrap().unwrap());
    log.send(Kind::Info, "no-startup-log-test: sent");
    log.close(Duration::from_secs(5)).await;
    assert!(coder
        .outputs()
        .contains(&"no-startup-log-test: sent".to_owned()));
}
