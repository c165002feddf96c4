//! `maas serve --grpc-port`: KServe's v2 gRPC service, driven by the stock `tritonclient[grpc]`
//! (tests/python/triton_grpc.py) and compared with the same server's REST answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::server::{Server, agent};
use common::{Look, make_certificate, save_image, wait_until, workspace_with_repository};
use maas::data::synthetic;
use serde_json::{Value, json};

const KEY: &str = "inference-key";
const ADMIN: &str = "admin-secret";

fn python() -> String {
    std::env::var("MAAS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs tests/python/SCRIPT with `args` in `dir`; what it saw, as JSON.
fn run_script(script: &str, dir: &std::path::Path, args: &[&str], server: &Server) -> Value {
    common::server::run_python(script, dir, args, server)
}

/// The gRPC status code name in a failure `[code, message]` the script recorded.
fn code(failure: &Value) -> &str {
    failure[0].as_str().unwrap()
}

#[test]
fn the_stock_triton_grpc_client_gets_what_rest_answers() {
    let ws = workspace_with_repository();
    let png = ws.path("image.png");
    save_image(&synthetic::sample_image(3, 7), &png, Look::Rgb, 32);
    // Room for the REST comparisons (3 images), not for 64 images in one message.
    let server = Server::start_serving(
        &ws,
        &[
            "--repository",
            "repo",
            "--admin-key",
            ADMIN,
            "--api-key",
            KEY,
            "--grpc-port",
            "0",
            "--max-body-bytes",
            "500000",
        ],
    );
    // Port 0: any free port, the one printed.
    let grpc = server.grpc_addr();
    assert!(
        grpc.starts_with("127.0.0.1:") && !grpc.ends_with(":0"),
        "{grpc}"
    );
    let seen = run_script(
        "triton_grpc.py",
        ws.dir.path(),
        &[
            "full",
            &grpc,
            server.addr(),
            "repo",
            "b.maas",
            KEY,
            ADMIN,
            png.to_str().unwrap(),
        ],
        &server,
    );

    // Triton's RepositoryIndex (proto/triton_extensions.proto), as REST's index.
    let rest_index: Value = serde_json::from_str(
        &agent()
            .post(&server.url("/v2/repository/index"))
            .header("Authorization", &format!("Bearer {ADMIN}"))
            .send_empty()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    let index = seen["index"].as_array().unwrap();
    assert_eq!(index.len(), 3, "{seen}");
    for (grpc, rest) in index.iter().zip(rest_index.as_array().unwrap()) {
        assert_eq!(
            (&grpc["name"], &grpc["version"], &grpc["state"]),
            (&rest["name"], &rest["version"], &rest["state"]),
            "{grpc} against {rest}"
        );
    }
    assert_eq!(
        code(&seen["index_with_api_key"]),
        "StatusCode.UNAUTHENTICATED"
    );
    assert_eq!(seen["live"], true);
    assert_eq!(seen["ready"], true);
    assert_eq!(
        code(&seen["metadata_without_key"]),
        "StatusCode.UNAUTHENTICATED"
    );
    assert_eq!(seen["server_metadata"]["name"], "maas");
    assert!(
        seen["server_metadata"]["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("model_repository")),
        "{seen}"
    );
    let metadata = &seen["model_metadata"];
    assert_eq!(metadata["versions"], json!(["1", "2"]));
    assert_eq!(metadata["inputs"][0]["name"], "input");
    assert_eq!(
        metadata["inputs"][0]["shape"],
        json!(["-1", "3", "32", "32"])
    );
    assert_eq!(metadata["outputs"][0]["shape"], json!(["-1", "10"]));
    assert_eq!(seen["ready_v1"], true);
    assert_eq!(seen["ready_unknown"], false);

    assert_eq!(seen["versions"], json!(["1", "2", "2"]));
    assert_eq!(seen["shape"], json!([3, 10]));
    assert_eq!(seen["v1_as_rest"], true);
    assert_eq!(seen["v2_as_rest"], true);
    assert_eq!(seen["v1_differs_from_v2"], true);
    assert_eq!(seen["latest_is_v2"], true);
    assert_eq!(seen["bytes_as_rest"], true);
    assert_eq!(seen["typed_as_raw"], true);
    assert_eq!(seen["typed_id"], "typed-1");

    assert_eq!(code(&seen["wrong_key"]), "StatusCode.UNAUTHENTICATED");
    assert_eq!(code(&seen["unknown_model"]), "StatusCode.NOT_FOUND");
    assert!(
        seen["unknown_model"][1]
            .as_str()
            .unwrap()
            .contains("unknown model 'nope'"),
        "{seen}"
    );
    // The same words as the REST answer to the same tensor.
    assert_eq!(code(&seen["bad_shape"]), "StatusCode.INVALID_ARGUMENT");
    assert!(
        seen["bad_shape"][1]
            .as_str()
            .unwrap()
            .contains("expected [N,3,32,32]"),
        "{seen}"
    );
    assert_eq!(code(&seen["out_of_range"]), "StatusCode.INVALID_ARGUMENT");
    assert!(
        seen["out_of_range"][1]
            .as_str()
            .unwrap()
            .contains("values must be in [0, 1]"),
        "{seen}"
    );
    assert_eq!(
        code(&seen["too_large"]),
        "StatusCode.OUT_OF_RANGE",
        "{seen}"
    );

    assert_eq!(
        code(&seen["load_with_api_key"]),
        "StatusCode.UNAUTHENTICATED"
    );
    assert_eq!(seen["v1_after_load_is_v2"], true);
    assert_eq!(code(&seen["corrupt_load"]), "StatusCode.INVALID_ARGUMENT");
    let reason = seen["corrupt_load"][1].as_str().unwrap();
    assert!(
        reason.contains("model 'cifar' version 2") && reason.contains("repo/cifar/2/model.maas"),
        "{reason}"
    );
    assert_eq!(seen["v2_after_corrupt_is_old_v2"], true);
    assert_eq!(seen["other_ready_after_unload"], false);
    assert_eq!(code(&seen["infer_after_unload"]), "StatusCode.NOT_FOUND");
    assert_eq!(
        seen["index_after_unload"],
        json!(["cifar:1:READY", "cifar:2:READY", "other::UNAVAILABLE"])
    );
    assert_eq!(
        seen["ready_index_after_unload"],
        json!(["cifar:1:READY", "cifar:2:READY"])
    );
    assert_eq!(seen["other_ready_after_load"], true);

    // Two gRPC requests of three images answered, one refused, after the reload (which keeps no
    // statistics of the unloaded model).
    let stats = &seen["stats_other"]["model_stats"][0];
    assert_eq!(stats["inference_count"], 6, "{stats}");
    assert_eq!(stats["execution_count"], 2, "{stats}");
    assert_eq!(stats["inference_stats"]["success"]["count"], 2, "{stats}");
    assert_eq!(stats["inference_stats"]["fail"]["count"], 1, "{stats}");
    // Triton's ModelStatistics over gRPC reads the same figures.
    assert_eq!(seen["grpc_stats"], json!([6, 2, 2, 1, 2, 2]), "{seen}");
    assert_eq!(seen["grpc_stats_equal_rest"], true, "{seen}");
    assert_eq!(
        seen["grpc_stats_all"],
        json!([["cifar", "1"], ["cifar", "2"], ["other", "1"]])
    );

    // /metrics counts gRPC calls by method and the status they stand for.
    let metrics = agent()
        .get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let infer_ok = metrics.lines().find(|l| {
        l.starts_with("maas_requests_total{")
            && l.contains("/inference.GRPCInferenceService/ModelInfer")
            && l.contains("status=\"200\"")
    });
    let count: f64 = infer_ok
        .unwrap_or_else(|| panic!("no gRPC ModelInfer line in /metrics:\n{metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Three versions, the image, the typed contents, two after the loads, two of `other`.
    assert_eq!(count, 9.0, "{metrics}");

    // KServe's own client, and KServe's numbering of the repository calls.
    let seen = run_script(
        "kserve_grpc.py",
        ws.dir.path(),
        &[&grpc, KEY, ADMIN],
        &server,
    );
    assert_eq!(seen["live"], true, "{seen}");
    assert_eq!(seen["ready"], true, "{seen}");
    assert_eq!(seen["shape"], json!([2, 10]), "{seen}");
    assert_eq!(seen["rows_sum_to_one"], true, "{seen}");
    assert_eq!(seen["unload"], json!(["other", true]), "{seen}");
    assert_eq!(seen["ready_after_unload"], false, "{seen}");
    assert_eq!(seen["load"], json!(["other", true]), "{seen}");
    assert_eq!(seen["same_after_load"], true, "{seen}");
    assert_eq!(
        code(&seen["outside"]),
        "StatusCode.INVALID_ARGUMENT",
        "{seen}"
    );

    // SIGTERM stops both endpoints and the process exits 0.
    let mut server = server;
    server.terminate();
    assert_eq!(
        server.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        server.stderr()
    );
}

#[test]
fn grpc_over_tls_answers_as_https_and_refuses_plaintext() {
    let ws = common::Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    make_certificate(ws.dir.path());
    let server = Server::start(
        &ws,
        &[
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
            "--api-key",
            KEY,
            "--grpc-port",
            "0",
        ],
    );
    let grpc = server.grpc_addr();
    let port = grpc.trim_start_matches("127.0.0.1:");
    assert!(server.base.starts_with("https://"), "{}", server.base);
    // The certificate names localhost and 127.0.0.1; the client checks it against cert.pem.
    let seen = run_script(
        "triton_grpc.py",
        ws.dir.path(),
        &[
            "tls",
            &format!("localhost:{port}"),
            &server.base,
            KEY,
            "cert.pem",
        ],
        &server,
    );
    assert_eq!(seen["live"], true, "{seen}");
    assert_eq!(seen["as_rest"], true, "{seen}");
    assert_eq!(code(&seen["wrong_key"]), "StatusCode.UNAUTHENTICATED");
    for refused in seen["no_admin_key"].as_array().unwrap() {
        assert_eq!(code(refused), "StatusCode.PERMISSION_DENIED", "{refused}");
        assert!(
            refused[1].as_str().unwrap().contains("--admin-key"),
            "{refused}"
        );
    }
    assert_eq!(code(&seen["plaintext"]), "StatusCode.UNAVAILABLE", "{seen}");
}

/// `/metrics`' count of gRPC infer calls answered OK.
const GRPC_INFER_ANSWERED: &str =
    r#"maas_requests_total{route="/inference.GRPCInferenceService/ModelInfer",status="200"}"#;

/// gRPC calls without pause (8 tritonclient threads) while version 2 of the model they call is
/// replaced and loaded again and again: not one call may fail.
#[test]
fn reloads_under_steady_grpc_calls_fail_none() {
    let ws = workspace_with_repository();
    let server = Server::start_serving(
        &ws,
        &[
            "--repository",
            "repo",
            "--admin-key",
            ADMIN,
            "--grpc-port",
            "0",
        ],
    );
    let grpc = server.grpc_addr();
    let script = format!("{}/tests/python/triton_grpc.py", env!("CARGO_MANIFEST_DIR"));
    let clients = Command::new(python())
        .args([&script, "steady", &grpc, "6", "8"])
        .current_dir(ws.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (.ci/run installs tritonclient[grpc])");
    // Each reload once calls are being answered, the first one included.
    let calls = || server.metric(GRPC_INFER_ANSWERED);
    let mut answered = 0.0;
    let target = ws.path("repo/cifar/2/model.maas");
    for round in 0..6 {
        assert!(
            wait_until(Duration::from_secs(60), || calls() > answered),
            "no gRPC call answered before reload {round}:\n{}",
            server.stderr()
        );
        answered = calls();
        // A new file renamed into place, then the load route.
        let source = ws.path(if round % 2 == 0 { "a.maas" } else { "b.maas" });
        std::fs::copy(&source, target.with_extension("new")).unwrap();
        std::fs::rename(target.with_extension("new"), &target).unwrap();
        let loaded = agent()
            .post(&server.url("/v2/repository/models/cifar/load"))
            .header("Authorization", &format!("Bearer {ADMIN}"))
            .send_empty()
            .unwrap();
        assert_eq!(loaded.status().as_u16(), 200);
    }
    let out = clients.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("gRPC calls through six reloads: {seen}");
    assert_eq!(seen["failed"], 0, "{seen}");
    assert!(seen["requests"].as_u64().unwrap() >= 100, "{seen}");
}

#[test]
fn a_taken_grpc_port_is_an_error_naming_the_flag() {
    let ws = common::Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, err) = ws.run(&[
        "serve",
        "--port",
        "0",
        "--model",
        "model.maas",
        "--grpc-port",
        &port,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen for gRPC on 127.0.0.1:{port}"))
            && err.contains("--grpc-port"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("maas: error")).count(),
        1,
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// proto/*.proto are what the `kserve` and `tritonclient` packages (PyPI) compiled into their own
/// descriptors: regenerating them from those descriptors gives the same files.
#[test]
fn the_vendored_protos_are_kserve_s_and_triton_s() {
    let root = env!("CARGO_MANIFEST_DIR");
    let run = Command::new(python())
        .arg(format!("{root}/proto/generate.py"))
        .args([
            "--check",
            "grpc_predict_v2.proto",
            "triton_extensions.proto",
        ])
        .output()
        .expect("python3 runs (.ci/run installs kserve and tritonclient)");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// `--no-grpc` serves REST alone, on the port flags or not: no gRPC line, and the port given to
/// --grpc-port stays free.
#[test]
fn no_grpc_turns_the_endpoint_off() {
    let ws = common::Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port().to_string();
    drop(probe);
    let server = Server::start(&ws, &["--grpc-port", &port, "--no-grpc"]);
    assert!(!server.stderr().contains("gRPC"), "{}", server.stderr());
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
        "something listens on the gRPC port"
    );
    let live = agent().get(&server.url("/v2/health/live")).call().unwrap();
    assert_eq!(live.status(), 200);
}
