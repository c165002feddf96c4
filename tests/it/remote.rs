//! `predict`, `eval` and `explain` with `--url`: the same answers from a deployed model as from
//! the model file, against `maas serve` (binary and JSON tensors, an API key, HTTPS) and against a
//! v2 server we did not write (KServe's Python model server running the ONNX export through
//! onnxruntime); and the failures a caller meets, each one line and exit 1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{Server, free_port};
use common::{Look, Workspace, save_image, wait_until};
use maas::data::synthetic;
use serde_json::Value;

fn workspace_with_model() -> Workspace {
    let ws = Workspace::new(20, 60);
    ws.ok(&["train", "--epochs", "2", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    ws
}

/// Writes `n` images of mixed looks and sizes and a file that is not an image; returns their
/// names (the broken one last).
fn images(ws: &Workspace, n: usize) -> Vec<String> {
    let looks = [(Look::Rgb, 32), (Look::Grey, 48), (Look::Rgba, 20)];
    let mut names: Vec<String> = (0..n)
        .map(|i| {
            let name = format!("img{i:02}.png");
            let (look, size) = looks[i % looks.len()];
            save_image(
                &synthetic::sample_image(i, 7 + i as u64),
                &ws.path(&name),
                look,
                size,
            );
            name
        })
        .collect();
    std::fs::write(ws.path("broken.png"), b"not a picture").unwrap();
    names.push("broken.png".into());
    names
}

fn json(ws: &Workspace, args: &[&str], expect_code: i32) -> Value {
    let (code, out, err) = ws.run(args);
    assert_eq!(code, expect_code, "maas {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
}

/// Every prediction of a `predict --json --top-k 10` report: file, label, index and the
/// probabilities in class order.
fn rows(report: &Value) -> Vec<(String, String, u64, Vec<f64>)> {
    report["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["file"].as_str().unwrap().to_string(),
                p["label"].as_str().unwrap().to_string(),
                p["index"].as_u64().unwrap(),
                common::class_probabilities(p),
            )
        })
        .collect()
}

/// Same files, labels (or indices only, for a server without class names) and probabilities
/// to 1e-6.
fn assert_same_predictions(remote: &Value, local: &Value, labels_too: bool) {
    let (remote, local) = (rows(remote), rows(local));
    assert_eq!(remote.len(), local.len());
    for (r, l) in remote.iter().zip(&local) {
        assert_eq!((&r.0, r.2), (&l.0, l.2));
        if labels_too {
            assert_eq!(r.1, l.1, "{}", r.0);
        }
        for (a, b) in r.3.iter().zip(&l.3) {
            assert!((a - b).abs() <= 1e-6, "{}: {a} vs {b}", r.0);
        }
    }
}

/// The figures of `eval --json`, without the fields that name the model and the picture.
fn assert_same_figures(remote: &Value, local: &Value) {
    for field in [
        "samples",
        "accuracy",
        "top3_accuracy",
        "classes",
        "labels",
        "confusion",
    ] {
        assert_eq!(remote[field], local[field], "{field}");
    }
    let loss = |v: &Value| v["mean_loss"].as_f64().unwrap();
    assert!((loss(remote) - loss(local)).abs() <= 1e-6);
}

fn predict_args<'a>(extra: &[&'a str], names: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["predict", "--json", "--top-k", "10"];
    args.extend_from_slice(extra);
    args.extend(names.iter().map(String::as_str));
    args
}

#[test]
fn predict_and_eval_by_url_equal_local_over_binary_and_json_with_a_key() {
    let ws = workspace_with_model();
    let names = images(&ws, 7);
    let local = json(&ws, &predict_args(&["--model", "model.maas"], &names), 1);
    let local_eval = json(&ws, &["eval", "--json", "--model", "model.maas"], 0);
    let server = Server::start(&ws, &["--api-key", "sesame"]);
    let url = server.base.clone();
    for tensors in ["binary", "json"] {
        let flags = ["--url", &url, "--api-key", "sesame", "--tensors", tensors];
        let remote = json(&ws, &predict_args(&flags, &names), 1);
        assert_eq!(
            remote["model"],
            format!("{url}/v2/models/maas"),
            "the model field names the URL and the model"
        );
        assert_same_predictions(&remote, &local, true);
        assert_eq!(
            remote["errors"], local["errors"],
            "the broken file, as locally"
        );
        let mut eval = vec!["eval", "--json", "--plots", "remote-plots"];
        eval.extend_from_slice(&flags);
        let remote_eval = json(&ws, &eval, 0);
        assert_same_figures(&remote_eval, &local_eval);
        assert!(ws.path("remote-plots/confusion.png").is_file());
    }
    // A version, by the versioned routes.
    let flags = ["--url", &url, "--api-key", "sesame", "--model-version", "1"];
    let versioned = json(&ws, &predict_args(&flags, &names), 1);
    assert_eq!(
        versioned["model"],
        format!("{url}/v2/models/maas/versions/1")
    );
    assert_same_predictions(&versioned, &local, true);
    // The same from the environment, the key from a file; --fail-under as locally.
    std::fs::write(ws.path("key.txt"), "sesame\n").unwrap();
    let (code, _, err) = ws
        .maas(&["eval", "--api-key-file", "key.txt", "--fail-under", "1"])
        .env("MAAS_URL", &url)
        .output()
        .map(|o| {
            (
                o.status.code().unwrap(),
                String::new(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    let accuracy = local_eval["accuracy"].as_f64().unwrap();
    assert_eq!(code, i32::from(accuracy < 1.0), "{err}");

    // A wrong key, and none.
    let (code, out, err) = ws.run(&["predict", "--url", &url, "--api-key", "open", &names[0]]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&url) && err.contains("refused the API key"),
        "{err}"
    );
    let (code, _, err) = ws.run(&["predict", "--url", &url, &names[0]]);
    assert_eq!(code, 1);
    assert!(err.contains("wants an API key"), "{err}");
    // An unknown model or version.
    let (code, _, err) = ws.run(&[
        "predict",
        "--url",
        &url,
        "--api-key",
        "sesame",
        "--model-name",
        "nope",
        &names[0],
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{url}/v2/models/nope")) && err.contains("404"),
        "{err}"
    );

    // explain --url draws what `maas explain` draws.
    ws.ok(&[
        "explain",
        "--model",
        "model.maas",
        "--out",
        "here",
        &names[0],
    ]);
    ws.ok(&[
        "explain",
        "--url",
        &url,
        "--api-key",
        "sesame",
        "--out",
        "there",
        &names[0],
    ]);
    assert_eq!(
        std::fs::read(ws.path("here/img00.explain.png")).unwrap(),
        std::fs::read(ws.path("there/img00.explain.png")).unwrap()
    );
}

#[test]
fn https_with_cacert_equals_local_and_an_untrusted_certificate_is_one_line() {
    let ws = workspace_with_model();
    common::make_certificate(ws.dir.path());
    let server = Server::start(&ws, &["--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
    assert!(server.base.starts_with("https://"));
    let names = images(&ws, 3);
    let names = &names[..3];
    let local = json(&ws, &predict_args(&["--model", "model.maas"], names), 0);
    let flags = ["--url", &server.base, "--cacert", "cert.pem"];
    let remote = json(&ws, &predict_args(&flags, names), 0);
    assert_same_predictions(&remote, &local, true);
    let (code, _, err) = ws.run(&["predict", "--url", &server.base, &names[0]]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("TLS") && err.contains("--cacert"), "{err}");
    // bench over TLS too: its own connections (tokio-rustls) trust the same certificate.
    let bench = [
        "bench",
        "--url",
        &server.base,
        "--cacert",
        "cert.pem",
        "--concurrency",
        "2",
        "--requests",
        "10",
        "--json",
    ];
    let report = json(&ws, &bench, 0);
    let level = &report["results"][0];
    assert_eq!(
        (level["requests"].as_u64(), level["errors"].as_u64()),
        (Some(10), Some(0))
    );
}

/// KServe's Python model server on a free port, killed when dropped.
struct Kserve {
    child: Child,
    url: String,
}

impl Kserve {
    fn start(ws: &Workspace) -> Kserve {
        let port = free_port();
        let python = std::env::var("MAAS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kserve_onnx_model.py");
        let child = Command::new(python)
            .args([script, "model.onnx", &port.to_string(), "cifar"])
            .current_dir(ws.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (.ci/run installs kserve and onnxruntime)");
        let server = Kserve {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .proxy(None)
            .build()
            .into();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(90) {
            let ready = agent.get(&format!("{}/v2/health/ready", server.url)).call();
            if ready.is_ok_and(|r| r.status() == 200) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("KServe did not become ready (is the kserve package installed?)");
    }
}

impl Drop for Kserve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_kserve_server_running_the_onnx_export_answers_as_the_model_file() {
    let ws = workspace_with_model();
    ws.ok(&["export", "--format", "onnx", "-o", "model.onnx", "--quiet"]);
    let names = images(&ws, 5);
    let local = json(&ws, &predict_args(&["--model", "model.maas"], &names), 1);
    let server = Kserve::start(&ws);
    // Its metadata names no classes: the index is the label, or --classes names them.
    let remote = json(&ws, &predict_args(&["--url", &server.url], &names), 1);
    assert_eq!(remote["model"], format!("{}/v2/models/cifar", server.url));
    assert_same_predictions(&remote, &local, false);
    let first = &remote["predictions"][0];
    assert_eq!(first["label"].as_str().unwrap(), first["index"].to_string());
    let meta =
        std::fs::read_to_string(ws.path("data/cifar-10-batches-bin/batches.meta.txt")).unwrap();
    std::fs::write(ws.path("classes.txt"), meta).unwrap();
    let flags = ["--url", &server.url, "--classes", "classes.txt"];
    let named = json(&ws, &predict_args(&flags, &names), 1);
    assert_same_predictions(&named, &local, true);
    // eval takes the dataset's class names and gives the local figures.
    let local_eval = json(&ws, &["eval", "--json", "--model", "model.maas"], 0);
    let remote_eval = json(&ws, &["eval", "--json", "--url", &server.url], 0);
    assert_same_figures(&remote_eval, &local_eval);
    // It does not explain.
    let (code, _, err) = ws.run(&["explain", "--url", &server.url, &names[0]]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/v1/explain") && err.contains("does not explain"),
        "{err}"
    );
}

#[test]
fn a_server_that_is_down_or_silent_is_one_line_and_exit_1() {
    let ws = Workspace::new(1, 1);
    let names = images(&ws, 1);
    let port = free_port();
    let down = format!("http://127.0.0.1:{port}");
    let (code, out, err) = ws.run(&["predict", "--url", &down, &names[0]]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&down) && err.contains("connection refused"),
        "{err}"
    );
    // Accepts connections and never answers: the deadline ends the wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (code, _, err) = ws.run(&["eval", "--url", &url, "--timeout-ms", "300"]);
    assert_eq!(code, 1);
    assert!(err.contains("no answer within --timeout-ms 300"), "{err}");
    let (code, _, err) = ws.run(&["predict", "--url", "ftp://example", &names[0]]);
    assert_eq!(code, 1);
    assert!(err.contains("not an http:// or https:// URL"), "{err}");
}

/// `/metrics`' count of v2 infer requests answered 200.
const INFER_ANSWERED: &str = r#"maas_requests_total{route="/v2/models/{name}/infer",status="200"}"#;

#[test]
fn bench_reports_each_concurrency_level_as_json() {
    let ws = workspace_with_model();
    let server = Server::start(&ws, &["--api-key", "sesame"]);
    let url = server.base.clone();
    let args = [
        "bench",
        "--url",
        &url,
        "--api-key",
        "sesame",
        "--concurrency",
        "1,3",
        "--requests",
        "20",
        "--batch",
        "4",
        "--json",
    ];
    let report = json(&ws, &args, 0);
    assert_eq!(report["url"], url.as_str());
    assert_eq!(report["model"], format!("{url}/v2/models/maas/infer"));
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (level, clients) in results.iter().zip([1, 3]) {
        assert_eq!(level["concurrency"], clients);
        assert_eq!(
            (level["requests"].as_u64(), level["errors"].as_u64()),
            (Some(20), Some(0))
        );
        let (rps, ips) = (
            level["requests_per_s"].as_f64().unwrap(),
            level["images_per_s"].as_f64().unwrap(),
        );
        assert!(rps > 0.0 && (ips - 4.0 * rps).abs() < 1e-6 * ips, "{level}");
        let l = &level["latency_ms"];
        let at = |k: &str| l[k].as_f64().unwrap();
        assert!(0.0 < at("p50") && at("p50") <= at("p90"), "{l}");
        assert!(at("p90") <= at("p99") && at("p99") <= at("max"), "{l}");
    }
    // A refused key is counted by status; the table says so.
    let (code, out, err) = ws.run(&[
        "bench",
        "--url",
        &url,
        "--api-key",
        "open",
        "--protocol",
        "v1-image",
        "--concurrency",
        "2",
        "--requests",
        "6",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("errors at concurrency 2: 401: 6"), "{out}");
    // Ctrl-C ends the level in progress, prints it and skips the rest (exit 130).
    let answered = || server.metric(INFER_ANSWERED);
    let before = answered();
    let child = Command::new(env!("CARGO_BIN_EXE_maas"))
        .args([
            "bench",
            "--url",
            &url,
            "--api-key",
            "sesame",
            "--concurrency",
            "1,8",
            "--json",
        ])
        .env("MAAS_PROGRESS", "never")
        .env_remove("MAAS_URL")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The first level (10 s) is under way once the server has answered one of its requests.
    assert!(
        wait_until(Duration::from_secs(60), || answered() > before),
        "bench sent no request:\n{}",
        server.stderr()
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["interrupted"], true);
    // The first level, cut short, and no other.
    let levels = report["results"].as_array().unwrap();
    assert_eq!(levels.len(), 1, "{report}");
    assert_eq!(levels[0]["concurrency"], 1, "{report}");
    assert!(levels[0]["requests"].as_u64().unwrap() > 0, "{report}");
    // A server that is down is one line.
    drop(server);
    let (code, _, err) = ws.run(&["bench", "--url", &url, "--protocol", "v1-image"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&url) && err.contains("cannot connect"),
        "{err}"
    );
}

/// Runs examples/pipeline.sh on the workspace's data with the given settings; gives its exit
/// code and output.
fn pipeline(ws: &Workspace, settings: &[(&str, &str)]) -> (i32, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pipeline.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .current_dir(ws.dir.path())
        .env("MAAS", env!("CARGO_BIN_EXE_maas"))
        .env("DATA", ws.path("data"))
        .env("MAAS_PROGRESS", "never")
        .env_remove("MAAS_URL")
        .env_remove("MAAS_API_KEY");
    for (k, v) in settings {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_pipeline_example_passes_a_good_model_and_fails_one_below_the_bar() {
    let ws = Workspace::new(20, 60);
    let (code, out) = pipeline(&ws, &[("EPOCHS", "3"), ("BAR", "0.5")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("accuracy") && out.contains("reaches --fail-under 0.5"),
        "{out}"
    );
    // One image, one epoch: far below the bar, and the job fails.
    let (code, out) = pipeline(&ws, &[("EPOCHS", "1"), ("LIMIT", "1"), ("BAR", "0.9")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("below --fail-under 0.9"), "{out}");
}

/// A server on a free loopback port that answers every request with `status` and `body`.
fn answering(status: u16, body: &'static str) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let _ =
                request.respond(tiny_http::Response::from_string(body).with_status_code(status));
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn statuses_and_answers_that_are_not_the_protocol_are_one_line_naming_the_url() {
    let ws = Workspace::new(1, 1);
    let names = images(&ws, 1);
    for (status, body, expected) in [
        (
            200,
            "<html>hello</html>",
            "the answer is not the Open Inference Protocol",
        ),
        (
            503,
            r#"{"error": "overloaded"}"#,
            "the server failed (HTTP 503: overloaded)",
        ),
        (413, "", "too large for the server (HTTP 413)"),
        (404, "", "no such model or version"),
    ] {
        let url = answering(status, body);
        let (code, out, err) = ws.run(&["predict", "--url", &url, &names[0]]);
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("{url}/v2")) && err.contains(expected),
            "{err}"
        );
    }
}
