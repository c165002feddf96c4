//! `maas serve --repository`: many models and versions, loads and unloads without downtime,
//! statistics; checked over HTTP and with the stock tritonclient.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{Server, agent};
use common::{Workspace, wait_until, workspace_with_repository};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret";

fn python() -> String {
    std::env::var("MAAS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Status and body of a request; `None` as the status when the connection failed.
fn call(request: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (Option<u16>, String) {
    match request {
        Ok(response) => {
            let status = response.status().as_u16();
            let mut body = String::new();
            let _ = response.into_body().into_reader().read_to_string(&mut body);
            (Some(status), body)
        }
        Err(e) => (None, e.to_string()),
    }
}

fn get(server: &Server, path: &str) -> (Option<u16>, String) {
    call(agent().get(&server.url(path)).call())
}

fn post(server: &Server, path: &str, key: Option<&str>, body: &Value) -> (Option<u16>, String) {
    let mut request = agent().post(&server.url(path));
    if let Some(key) = key {
        request = request.header("Authorization", &format!("Bearer {key}"));
    }
    call(request.send(serde_json::to_vec(body).unwrap().as_slice()))
}

/// An infer request of one image, every value `level`.
fn one_image(level: f32) -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": vec![level; 3072]}]})
}

/// The probabilities a v2 infer answer carries.
fn probabilities(body: &str) -> Vec<f64> {
    let answer: Value = serde_json::from_str(body).unwrap();
    answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Copies `source` over `target` the way a deployment would: a new file renamed into place.
fn replace(source: &Path, target: &Path) {
    let staged = target.with_extension("new");
    std::fs::copy(source, &staged).unwrap();
    std::fs::rename(&staged, target).unwrap();
}

#[test]
fn every_version_answers_as_its_own_file_and_the_highest_by_default() {
    let ws = workspace_with_repository();
    let server = Server::start_serving(&ws, &["--repository", "repo"]);
    assert!(
        server
            .stderr()
            .contains("2 models (cifar, other), 3 versions, from repository repo"),
        "{}",
        server.stderr()
    );
    let answer = |path: &str| {
        let (status, body) = post(&server, path, None, &one_image(0.3));
        assert_eq!(status, Some(200), "{path}: {body}");
        let version: Value = serde_json::from_str(&body).unwrap();
        (probabilities(&body), version["model_version"].clone())
    };
    let (v1, name1) = answer("/v2/models/cifar/versions/1/infer");
    let (v2, name2) = answer("/v2/models/cifar/versions/2/infer");
    let (latest, name_latest) = answer("/v2/models/cifar/infer");
    let (other, _) = answer("/v2/models/other/infer");
    assert_eq!(
        (name1, name2, name_latest),
        (json!("1"), json!("2"), json!("2"))
    );
    assert_ne!(v1, v2, "versions 1 and 2 hold different weights");
    assert_eq!(latest, v2);
    assert_eq!(other, v1, "other/1 is the file of cifar/1");
    let (status, body) = get(&server, "/v2/models/cifar");
    assert_eq!(status, Some(200));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["versions"],
        json!(["1", "2"])
    );
    let (status, body) = get(&server, "/v2/models/cifar/versions/3/ready");
    assert_eq!(status, Some(404));
    assert!(body.contains("no loaded version '3'"), "{body}");
    // Two models, neither named by --model-name (maas): /v1 has no default and says why.
    let (status, body) = call(agent().post(&server.url("/v1/predict")).send(&b"x"[..]));
    assert_eq!(status, Some(404));
    assert!(body.contains("no default model"), "{body}");
    // Statistics and /metrics count per model and version.
    let (status, body) = get(&server, "/v2/models/cifar/versions/2/stats");
    assert_eq!(status, Some(200));
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        stats["model_stats"][0]["inference_stats"]["success"]["count"],
        2
    );
    let (_, metrics) = get(&server, "/metrics");
    for line in [
        "maas_model_requests_total{model=\"cifar\",version=\"2\",result=\"success\"} 2",
        "maas_model_requests_total{model=\"cifar\",version=\"1\",result=\"success\"} 1",
        "maas_model_inferences_total{model=\"other\",version=\"1\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
}

#[test]
fn model_accepts_a_folder_holding_one_model_file_and_v1_uses_it() {
    let ws = Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    std::fs::create_dir_all(ws.path("mnt/models")).unwrap();
    ws.ok(&["export", "-o", "mnt/models/cifar.maas", "--quiet"]);
    let server = Server::start_serving(&ws, &["--model", "mnt/models"]);
    assert!(
        server
            .stderr()
            .contains("model maas from mnt/models/cifar.maas"),
        "{}",
        server.stderr()
    );
    let mut png = Vec::new();
    image::RgbImage::new(32, 32)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (status, body) = call(agent().post(&server.url("/v1/predict")).send(&png[..]));
    assert_eq!(status, Some(200), "{body}");
    drop(server);
    // A folder of two model files is ambiguous: refused, naming the folder.
    ws.ok(&["export", "-o", "mnt/models/again.maas", "--quiet"]);
    let (code, _, err) = ws.run(&["serve", "--port", "0", "--model", "mnt/models"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--model mnt/models: the folder holds 2 .maas files"),
        "{err}"
    );
    let (code, _, err) = ws.run(&["serve", "--port", "0", "--repository", "nowhere"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--repository nowhere: not a folder"), "{err}");
    let (code, _, err) = ws.run(&["serve", "--model", "x", "--repository", "mnt"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_corrupt_file_at_startup_is_refused_naming_it() {
    let ws = workspace_with_repository();
    std::fs::write(ws.path("repo/other/1/model.maas"), b"garbage").unwrap();
    let (code, _, err) = ws.run(&["serve", "--port", "0", "--repository", "repo"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("repo/other/1/model.maas"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn admin_routes_need_the_admin_key_and_sighup_reloads() {
    let ws = workspace_with_repository();
    let server = Server::start_serving(&ws, &["--repository", "repo", "--admin-key", ADMIN]);
    let index = "/v2/repository/index";
    assert_eq!(post(&server, index, None, &json!({})).0, Some(401));
    assert_eq!(post(&server, index, Some("wrong"), &json!({})).0, Some(401));
    let (status, body) = post(&server, index, Some(ADMIN), &json!({}));
    assert_eq!(status, Some(200), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!([
            {"name": "cifar", "version": "1", "state": "READY", "reason": ""},
            {"name": "cifar", "version": "2", "state": "READY", "reason": ""},
            {"name": "other", "version": "1", "state": "READY", "reason": ""},
        ])
    );
    let load = "/v2/repository/models/cifar/load";
    let (status, body) = post(
        &server,
        load,
        Some(ADMIN),
        &json!({"parameters": {"config": "{}"}}),
    );
    assert_eq!(status, Some(400));
    assert!(body.contains("repository only"), "{body}");
    let (status, body) = post(
        &server,
        "/v2/repository/models/nothing/load",
        Some(ADMIN),
        &json!({}),
    );
    assert_eq!(status, Some(400));
    assert!(body.contains("holds no version"), "{body}");
    // A name that would step out of the repository is refused before any file is read.
    for name in ["%2E%2E", "..%2Fother", "cifar%2F..%2Fother"] {
        let path = format!("/v2/repository/models/{name}/load");
        let (status, body) = post(&server, &path, Some(ADMIN), &json!({}));
        assert_eq!(status, Some(400), "{path}: {body}");
        assert!(body.contains("cannot be a model name"), "{path}: {body}");
    }

    // SIGHUP: version 3 appears, version 1 goes, other is gone.
    let before = probabilities(
        &post(
            &server,
            "/v2/models/cifar/versions/1/infer",
            None,
            &one_image(0.3),
        )
        .1,
    );
    std::fs::create_dir_all(ws.path("repo/cifar/3")).unwrap();
    replace(&ws.path("a.maas"), &ws.path("repo/cifar/3/model.maas"));
    std::fs::remove_dir_all(ws.path("repo/cifar/1")).unwrap();
    std::fs::remove_dir_all(ws.path("repo/other")).unwrap();
    server.signal("-HUP");
    let started = Instant::now();
    while !server.stderr().contains("reloaded the models") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = post(&server, "/v2/models/cifar/infer", None, &one_image(0.3));
    assert_eq!(status, Some(200), "{body}");
    assert_eq!(
        probabilities(&body),
        before,
        "the highest version is now 3, the file of 1"
    );
    assert!(body.contains("\"model_version\":\"3\""), "{body}");
    assert_eq!(
        get(&server, "/v2/models/cifar/versions/1/ready").0,
        Some(404)
    );
    assert_eq!(get(&server, "/v2/models/other/ready").0, Some(404));
    let (_, body) = get(&server, "/v2/health/ready");
    assert_eq!(body, r#"{"ready":true}"#);
}

#[test]
fn the_stock_tritonclient_manages_the_repository() {
    let ws = workspace_with_repository();
    let server = Server::start_serving(&ws, &["--repository", "repo", "--admin-key", ADMIN]);
    let plain = Server::start_serving(&ws, &["--repository", "repo"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/triton_repository.py"
    );
    let run = Command::new(python())
        .arg(script)
        .args([
            server.addr(),
            "repo",
            "a.maas",
            "b.maas",
            ADMIN,
            plain.addr(),
        ])
        .current_dir(ws.path(""))
        .output()
        .expect("python3 runs (.ci/run installs tritonclient)");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "tritonclient failed: {stderr}\n{}",
        server.stderr()
    );
    let seen: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(seen["index"].as_array().unwrap().len(), 3, "{seen}");
    assert_eq!(seen["versions"], json!(["1", "2", "2"]));
    assert_eq!(seen["v1_differs_from_v2"], true);
    assert_eq!(seen["latest_is_v2"], true);
    assert_eq!(seen["metadata_versions"], json!(["1", "2"]));
    assert_eq!(seen["wrong_key"][0], "401", "{seen}");
    assert_eq!(seen["v1_after_load_is_v2"], true);
    assert_eq!(seen["corrupt_load"][0], "400", "{seen}");
    let reason = seen["corrupt_load"][1].as_str().unwrap();
    assert!(
        reason.contains("model 'cifar' version 2") && reason.contains("repo/cifar/2/model.maas"),
        "{reason}"
    );
    assert_eq!(seen["v2_after_corrupt_is_old_v2"], true);
    let v2 = &seen["index_after_corrupt"][1];
    assert_eq!(
        (&v2["version"], &v2["state"]),
        (&json!("2"), &json!("READY"))
    );
    assert!(
        v2["reason"]
            .as_str()
            .unwrap()
            .contains("the last load failed"),
        "{v2}"
    );
    // Two requests of three images answered, one refused.
    let stats = &seen["stats_other"]["model_stats"][0];
    assert_eq!(stats["name"], "other");
    assert_eq!(stats["inference_count"], 6, "{stats}");
    assert_eq!(stats["execution_count"], 2, "{stats}");
    assert_eq!(stats["inference_stats"]["success"]["count"], 2, "{stats}");
    assert_eq!(stats["inference_stats"]["fail"]["count"], 1, "{stats}");
    assert_eq!(stats["inference_stats"]["queue"]["count"], 2, "{stats}");
    assert_eq!(
        stats["inference_stats"]["compute_infer"]["count"], 2,
        "{stats}"
    );
    assert!(stats["inference_stats"]["success"]["ns"].as_u64().unwrap() > 0);
    assert_eq!(seen["stats_other_v1"]["model_stats"][0], *stats);
    assert_eq!(
        seen["stats_all_names"],
        json!([["cifar", "1"], ["cifar", "2"], ["other", "1"]])
    );
    assert_eq!(seen["bad_request"][0], "400");
    assert_eq!(seen["other_ready_after_unload"], false);
    assert_eq!(seen["infer_after_unload"][0], "404");
    assert!(
        seen["index_after_unload"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "other", "state": "UNAVAILABLE", "reason": "unloaded"})),
        "{seen}"
    );
    assert_eq!(seen["other_ready_after_load"], true);
    for refused in seen["no_admin_key"].as_array().unwrap() {
        assert_eq!(refused[0], "403", "{refused}");
        assert!(
            refused[1].as_str().unwrap().contains("--admin-key"),
            "{refused}"
        );
    }
}

/// 64 clients call without pause while the model is reloaded again and again (a new file each
/// time, by the load route and by SIGHUP): not one request may fail. Prints throughput and p99
/// latency during the reloads against the steady state (bench/README.md quotes them).
#[test]
fn reloads_under_steady_load_fail_no_request() {
    let ws = workspace_with_repository();
    let server = Server::start_serving(&ws, &["--repository", "repo", "--admin-key", ADMIN]);
    let url = server.url("/v2/models/cifar/infer");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let epoch = Instant::now();
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let url = url.clone();
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let body = serde_json::to_vec(&one_image(i as f32 / 64.0)).unwrap();
                let agent = agent();
                // (start, latency, status or error) of every request.
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let start = epoch.elapsed();
                    let (status, body) = call(agent.post(&url).send(&body[..]));
                    seen.push((start, epoch.elapsed() - start, status, body));
                }
                seen
            })
        })
        .collect();
    let mut reloads = Vec::new();
    // Not a wait for anything: two seconds of steady load before the reloads and one between
    // them are what the figures below compare the reloads with.
    std::thread::sleep(Duration::from_secs(2));
    for round in 0..6 {
        let file = if round % 2 == 0 { "a.maas" } else { "b.maas" };
        replace(&ws.path(file), &ws.path("repo/cifar/2/model.maas"));
        let start = epoch.elapsed();
        if round == 5 {
            let before = server.stderr().matches("reloaded the models").count();
            server.signal("-HUP");
            let reloaded = || server.stderr().matches("reloaded the models").count() > before;
            assert!(
                wait_until(Duration::from_secs(60), reloaded),
                "no reload after SIGHUP:\n{}",
                server.stderr()
            );
        } else {
            let (status, body) = post(
                &server,
                "/v2/repository/models/cifar/load",
                Some(ADMIN),
                &json!({}),
            );
            assert_eq!(status, Some(200), "{body}");
        }
        reloads.push((start, epoch.elapsed()));
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let failed: Vec<_> = seen.iter().filter(|s| s.2 != Some(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during reloads, e.g. {:?}",
        failed.len(),
        seen.len(),
        failed.first()
    );
    // Figures for the record, not assertions: a shared CI machine's timing proves nothing.
    let during = |t: Duration| reloads.iter().any(|(a, b)| t >= *a && t <= *b);
    let (reloading, steady): (Vec<_>, Vec<_>) = seen.iter().partition(|s| during(s.0));
    let reload_time: Duration = reloads.iter().map(|(a, b)| *b - *a).sum();
    let first = Duration::from_secs(2);
    let last = seen.iter().map(|s| s.0).max().unwrap_or_default();
    let steady_time = last.saturating_sub(first).saturating_sub(reload_time);
    let steady: Vec<_> = steady.into_iter().filter(|s| s.0 >= first).collect();
    let p99 = |v: &[&(Duration, Duration, Option<u16>, String)]| {
        let mut l: Vec<Duration> = v.iter().map(|s| s.1).collect();
        l.sort();
        l.get(l.len() * 99 / 100).copied().unwrap_or_default()
    };
    eprintln!(
        "reload under load: {} requests, 0 failed; steady {:.0} req/s p99 {:.1} ms; during {} reloads ({:.2} s in all) {:.0} req/s p99 {:.1} ms",
        seen.len(),
        steady.len() as f64 / steady_time.as_secs_f64(),
        p99(&steady).as_secs_f64() * 1e3,
        reloads.len(),
        reload_time.as_secs_f64(),
        reloading.len() as f64 / reload_time.as_secs_f64().max(1e-9),
        p99(&reloading).as_secs_f64() * 1e3,
    );
}

/// Sends the head of a POST to `path` with `Content-Length: declared` and `head` extra header
/// lines, then `sent` bytes of body, and reads the answer's status line (60 s at most).
fn partial_post(server: &Server, path: &str, head: &str, declared: usize, sent: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n{head}\r\n"
    )
    .unwrap();
    stream.write_all(&vec![b' '; sent]).unwrap();
    let mut status = String::new();
    let _ = BufReader::new(stream).read_line(&mut status);
    status
}

/// Issue 28, points 3, 15 and 18: the load route checks the admin key before it reads a body,
/// and reads a keyed one within the deadline; a hidden folder is no model for load either; a
/// FIFO as a version's model.maas is named as what it is.
#[test]
fn load_checks_the_key_before_the_body_and_names_what_it_cannot_load() {
    let ws = workspace_with_repository();
    let server = Server::start_serving(
        &ws,
        &[
            "--repository",
            "repo",
            "--admin-key",
            ADMIN,
            "--timeout-ms",
            "2000",
        ],
    );
    let load = "/v2/repository/models/cifar/load";
    // 15 MiB announced, none sent, no key: answered 401 without waiting for the body (the old
    // route waited for all of it first, holding the connection and then the memory).
    let status = partial_post(&server, load, "", 15 << 20, 0);
    assert!(status.starts_with("HTTP/1.1 401"), "{status:?}");
    // With the key, a body that trickles is cut off at the deadline, as an infer body is.
    let key = format!("Authorization: Bearer {ADMIN}\r\n");
    let status = partial_post(&server, load, &key, 1000, 10);
    assert!(status.starts_with("HTTP/1.1 408"), "{status:?}");

    // A hidden folder is not a model: the repository scan skips it, and load refuses it.
    let hidden = ws.path("repo/.hidden/1");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::copy(ws.path("a.maas"), hidden.join("model.maas")).unwrap();
    let (status, body) = post(
        &server,
        "/v2/repository/models/.hidden/load",
        Some(ADMIN),
        &json!({}),
    );
    assert_eq!(status, Some(400), "{body}");
    assert!(body.contains("hidden folder"), "{body}");

    // A FIFO where the model file should be: named, not "holds no version", and no hang.
    let fifo = ws.path("repo/piped/1");
    std::fs::create_dir_all(&fifo).unwrap();
    let made = Command::new("mkfifo")
        .arg(fifo.join("model.maas"))
        .status()
        .unwrap();
    assert!(made.success());
    let (status, body) = post(
        &server,
        "/v2/repository/models/piped/load",
        Some(ADMIN),
        &json!({}),
    );
    assert_eq!(status, Some(400), "{body}");
    assert!(
        body.contains("model.maas") && body.contains("FIFO") && !body.contains("no version"),
        "{body}"
    );
    // The models being served are untouched by all of it.
    let (status, body) = post(&server, "/v2/models/cifar/infer", None, &one_image(0.3));
    assert_eq!(status, Some(200), "{body}");
}
