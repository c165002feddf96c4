//! The client side (`predict`/`eval`/`explain --url`, `bench`) against what issue 28 found: a
//! hostile server (absurd shapes, an answer without end, megabytes of error text with terminal
//! escapes, class names with control characters), float flags out of range, and a key file that
//! is not text. Each must be one line naming the culprit and exit 1 (2 for usage), never a panic.
//!
//! The servers are fakes on loopback, written here so that they can misbehave.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

use common::{Look, Workspace, save_image};
use maas::data::synthetic;
use serde_json::{Value, json};
use tokio_rustls::rustls;

/// A request as the fake server saw it.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// What the fake server answers.
enum Reply {
    /// A status, a content type and a body.
    Body(u16, &'static str, Vec<u8>),
    /// 200 with a chunked body of this many bytes: a stream the client must cut short.
    Stream(u64),
}

fn json_reply(status: u16, value: &Value) -> Reply {
    Reply::Body(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap(),
    )
}

type Route = dyn Fn(&Request) -> Reply + Send + Sync;

/// Serves `route` on a loopback port, one thread per connection, keep-alive; gives the port.
fn serve_on(route: Arc<Route>, tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (route, tls) = (Arc::clone(&route), tls.clone());
            std::thread::spawn(move || match tls {
                None => converse(stream, &*route),
                Some(config) => {
                    let Ok(connection) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    converse(rustls::StreamOwned::new(connection, stream), &*route)
                }
            });
        }
    });
    port
}

/// A plain-HTTP fake server; gives its base URL.
fn serve(route: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> String {
    format!("http://127.0.0.1:{}", serve_on(Arc::new(route), None))
}

/// Answers requests on one connection until the client closes it (or any error).
fn converse(stream: impl Read + Write, route: &Route) {
    let mut reader = BufReader::new(stream);
    let _ = (|| -> std::io::Result<()> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let mut words = line.split_whitespace();
            let method = words.next().unwrap_or_default().to_string();
            let path = words.next().unwrap_or_default().to_string();
            let mut length = 0;
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            let reply = route(&Request { method, path, body });
            let out = reader.get_mut();
            match reply {
                Reply::Body(status, content_type, body) => {
                    write!(
                        out,
                        "HTTP/1.1 {status} Whatever\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )?;
                    out.write_all(&body)?;
                }
                Reply::Stream(total) => {
                    out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
                    let chunk = vec![b' '; 1 << 16];
                    let mut sent = 0;
                    while sent < total {
                        write!(out, "{:x}\r\n", chunk.len())?;
                        out.write_all(&chunk)?;
                        out.write_all(b"\r\n")?;
                        sent += chunk.len() as u64;
                    }
                    out.write_all(b"0\r\n\r\n")?;
                }
            }
            out.flush()?;
        }
    })();
}

/// The routes of a v2 server of one model `m` (JSON tensors) with `metadata`, answering an infer
/// request of N images with `answer(N)`; anything else is 404.
fn v2_routes(
    metadata: Value,
    answer: impl Fn(usize) -> Value + Send + Sync + 'static,
) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    move |r: &Request| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/v2") => json_reply(200, &json!({"name": "fake", "extensions": []})),
        ("GET", "/v2/models") => json_reply(200, &json!({"models": ["m"]})),
        ("GET", "/v2/models/m") => json_reply(200, &metadata),
        ("POST", "/v2/models/m/infer") => {
            let request: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let rows = request["inputs"][0]["shape"][0].as_u64().unwrap_or(0);
            json_reply(200, &answer(rows as usize))
        }
        _ => json_reply(404, &json!({"error": "no such route"})),
    }
}

/// Metadata of a model whose output has `shape`.
fn metadata(shape: Value) -> Value {
    json!({"name": "m", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
           "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": shape}]})
}

/// An infer answer of `rows` rows of `row`, declaring `shape`.
fn answer(shape: Value, rows: usize, row: &[f32]) -> Value {
    json!({"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": shape,
                        "data": row.repeat(rows)}]})
}

/// A workspace with `n` small PNGs; gives their names.
fn workspace_with_images(n: usize) -> (Workspace, Vec<String>) {
    let ws = Workspace::new(1, 1);
    let names = (0..n)
        .map(|i| {
            let name = format!("img{i}.png");
            save_image(
                &synthetic::sample_image(i, 3),
                &ws.path(&name),
                Look::Rgb,
                32,
            );
            name
        })
        .collect();
    (ws, names)
}

/// Asserts a run failed with exit 1 and one line on stderr holding every one of `expected`;
/// gives the line.
fn one_line_failure(outcome: (i32, String, String), expected: &[&str]) -> String {
    let (code, out, err) = outcome;
    assert_eq!(
        code,
        1,
        "stdout: {out}\nstderr: {}",
        &err[..err.len().min(2000)]
    );
    assert_eq!(err.lines().count(), 1, "{}", &err[..err.len().min(2000)]);
    for e in expected {
        assert!(
            err.contains(e),
            "{e:?} not in {}",
            &err[..err.len().min(2000)]
        );
    }
    err
}

/// Point 6: output shapes that would size the client by the server's claim (2^62 classes, 30
/// million class names, a row of 2^63-1 values) are the server's mistake, said in one line,
/// before anything is allocated by them; `bench` shares the check.
#[test]
fn absurd_shapes_from_a_server_are_one_line_naming_it_not_a_crash() {
    let (ws, names) = workspace_with_images(3);
    // (The 30 million names took 1.66 GB before the client refused them; any count past
    // the bound shows the check, and this one costs the old code little.)
    for classes in [1i64 << 62, 100_000] {
        let url = serve(v2_routes(metadata(json!([-1, classes])), |_| json!({})));
        let expected = [&format!("{url}/v2/models/m"), "more than the 65536 classes"];
        one_line_failure(ws.run(&["predict", "--url", &url, &names[0]]), &expected);
        one_line_failure(
            ws.run(&["bench", "--url", &url, "--requests", "1"]),
            &expected,
        );
    }
    // Two classes in the metadata, then an answer claiming rows of 2^63-1 values: three rows
    // overflowed the count of values expected.
    let url = serve(v2_routes(metadata(json!([-1, 2])), |rows| {
        answer(json!([rows, i64::MAX]), rows, &[0.5, 0.5])
    }));
    let mut args = vec!["predict", "--url", &url];
    args.extend(names.iter().map(String::as_str));
    one_line_failure(
        ws.run(&args),
        &[
            &format!("{url}/v2/models/m/infer"),
            "more than the 65536 classes",
        ],
    );
}

/// Point 5: `bench` reads an answer's body without keeping it, and no further than `predict
/// --url`'s limit (64 MiB): a 96 MiB answer is counted as an error, not collected.
#[test]
fn bench_stops_reading_an_answer_at_the_answer_limit() {
    let ws = Workspace::new(1, 1);
    let url = serve(|r: &Request| match r.path.as_str() {
        "/v1/predict" => Reply::Stream(96 << 20),
        _ => json_reply(404, &json!({})),
    });
    let (code, out, err) = ws.run(&[
        "bench",
        "--url",
        &url,
        "--protocol",
        "v1-image",
        "--concurrency",
        "1",
        "--requests",
        "2",
        "--timeout-ms",
        "60000",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let level = &report["results"][0];
    assert_eq!(level["errors"], 2, "{level}");
    assert_eq!(level["errors_by_status"], json!({"answer too large": 2}));
}

/// Point 11: every float flag refuses NaN, infinities, values out of its range and durations
/// that overflow, as usage errors (exit 2) naming the flag, before anything runs.
#[test]
fn float_flags_out_of_range_are_usage_errors() {
    let ws = Workspace::new(1, 1);
    // Nothing may be fetched should a flag get through: the download goes nowhere.
    let refused = format!("http://127.0.0.1:{}/x.tar.gz", common::server::free_port());
    let down = refused.trim_end_matches("/x.tar.gz").to_string();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("--duration", vec!["bench", "--url", &down]),
        ("--lr", vec!["train", "--epochs", "1"]),
        ("--val-split", vec!["train", "--epochs", "1"]),
        ("--fail-under", vec!["eval"]),
    ];
    for (flag, args) in &cases {
        let mut bad = vec!["NaN", "inf", "-inf", "-1", "1e300"];
        if *flag == "--duration" {
            bad.extend(["0", "1e10"]);
        }
        for value in bad {
            // `--flag=-1`: a value, where `--flag -1` would read as another flag.
            let pair = format!("{flag}={value}");
            let mut args = args.clone();
            args.push(&pair);
            let out = ws
                .maas(&args)
                .env("MAAS_CIFAR10_URL", &refused)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(flag) && err.contains(value), "{args:?}: {err}");
        }
    }
}

/// Point 13: a server's error text reaches the terminal shortened and with its control
/// characters escaped, whether JSON (`{"error": ...}`) or plain text.
#[test]
fn a_servers_error_text_is_shortened_and_escaped() {
    let (ws, names) = workspace_with_images(1);
    let hostile = format!("\u{1b}]0;owned\u{7}\u{1b}[2J{}", "A".repeat(10 << 20));
    let as_json = serde_json::to_vec(&json!({ "error": hostile })).unwrap();
    for (content_type, body) in [
        ("application/json", as_json),
        ("text/plain", hostile.clone().into_bytes()),
    ] {
        let url = serve(move |_: &Request| Reply::Body(503, content_type, body.clone()));
        let err = one_line_failure(
            ws.run(&["predict", "--url", &url, &names[0]]),
            &[&url, "HTTP 503", "\\u{1b}]0;owned\\u{7}\\u{1b}[2JAAA"],
        );
        assert!(err.len() < 1000, "{} bytes", err.len());
        assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err}");
    }
}

/// Point 14: class names with control characters (from a server's metadata here; a model
/// file's are printed by the same code) are escaped in predict's table and explain's lines, and
/// kept as they are in JSON.
#[test]
fn class_names_with_control_characters_are_escaped_on_the_terminal() {
    let (ws, names) = workspace_with_images(2);
    let classes = ["cat\u{1b}[2J", "dog\nfish"];
    let mut meta = metadata(json!([-1, 2]));
    meta["classes"] = json!(classes);
    let v2 = v2_routes(meta, |rows| answer(json!([rows, 2]), rows, &[0.25, 0.75]));
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(4, 4)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let explained = json!({
        "top_k": [{"label": classes[1], "index": 1, "probability": 0.75}],
        "picture_png": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png.get_ref()),
    });
    let url = serve(move |r: &Request| {
        if r.path.starts_with("/v1/explain") {
            json_reply(200, &explained)
        } else {
            v2(r)
        }
    });
    let mut args = vec!["predict", "--url", &url, "--top-k", "2"];
    args.extend(names.iter().map(String::as_str));
    let table = ws.ok(&args);
    assert_eq!(
        table.lines().count(),
        3,
        "a header and one row per image:\n{table}"
    );
    assert!(!table.contains('\u{1b}'), "{table}");
    assert!(
        table.contains("dog\\nfish 75.0%, cat\\u{1b}[2J 25.0%"),
        "{table}"
    );
    args.push("--json");
    let report: Value = serde_json::from_str(&ws.ok(&args)).unwrap();
    assert_eq!(report["predictions"][0]["label"], classes[1]);
    assert_eq!(report["predictions"][0]["top_k"][1]["label"], classes[0]);
    let out = ws.ok(&["explain", "--url", &url, "--out", "pictures", &names[0]]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("img0.png: dog\\nfish 75.0%"), "{out}");
}

/// Point 18: a key file that is not text, or a key that cannot stand in a header, is said to be
/// so, naming the file or the flag, not blamed on the server's answer.
#[test]
fn an_unusable_api_key_names_its_source_not_the_server() {
    let (ws, names) = workspace_with_images(1);
    let url = serve(v2_routes(metadata(json!([-1, 2])), |rows| {
        answer(json!([rows, 2]), rows, &[0.5, 0.5])
    }));
    std::fs::write(ws.path("key.bin"), b"\xff\xfesecret\n").unwrap();
    std::fs::write(ws.path("key.txt"), "se\u{1b}cret\n").unwrap();
    for (command, file, problem) in [
        ("predict", "key.bin", "UTF-8"),
        ("bench", "key.bin", "UTF-8"),
        ("predict", "key.txt", "printable ASCII"),
    ] {
        let mut args = vec![command, "--url", &url, "--api-key-file", file];
        if command == "predict" {
            args.push(&names[0]);
        }
        let err = one_line_failure(ws.run(&args), &[&format!("--api-key-file {file}"), problem]);
        assert!(
            !err.contains("HTTP") || err.contains("HTTP headers"),
            "{err}"
        );
    }
    let err = one_line_failure(
        ws.run(&["predict", "--url", &url, "--api-key", "a\tb", &names[0]]),
        &["--api-key", "printable ASCII"],
    );
    assert!(!err.contains(&url), "{err}");
}

/// A self-signed certificate for localhost and 127.0.0.1 marked as a CA (basicConstraints
/// CA:TRUE, what `openssl req -x509` writes unless told otherwise): `NAME.pem`, `NAME.key`.
fn make_ca_certificate(dir: &std::path::Path, name: &str) {
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .current_dir(dir)
        .output()
        .expect("openssl makes the test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// A server configuration presenting `NAME.pem` with `NAME.key`.
fn server_tls(dir: &std::path::Path, name: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = std::fs::read(dir.join(format!("{name}.pem"))).unwrap();
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .unwrap();
    let key =
        PrivateKeyDer::from_pem_slice(&std::fs::read(dir.join(format!("{name}.key"))).unwrap())
            .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(config)
}

/// Point 10: a self-signed certificate marked as a CA, passed with --cacert, is trusted by
/// `predict`'s client and `bench`'s, as curl trusts it; without --cacert, or with another
/// certificate there, the connection is still refused in one line.
#[test]
fn a_self_signed_ca_certificate_given_with_cacert_is_trusted() {
    let (ws, names) = workspace_with_images(1);
    make_ca_certificate(ws.dir.path(), "server");
    make_ca_certificate(ws.dir.path(), "other");
    let v2 = v2_routes(metadata(json!([-1, 2])), |rows| {
        answer(json!([rows, 2]), rows, &[0.25, 0.75])
    });
    let port = serve_on(Arc::new(v2), Some(server_tls(ws.dir.path(), "server")));
    let url = format!("https://127.0.0.1:{port}");
    let out = ws.ok(&[
        "predict",
        "--json",
        "--url",
        &url,
        "--cacert",
        "server.pem",
        &names[0],
    ]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["predictions"][0]["index"], 1, "{report}");
    let bench = [
        "bench",
        "--url",
        &url,
        "--cacert",
        "server.pem",
        "--requests",
        "3",
        "--json",
    ];
    let report: Value = serde_json::from_str(&ws.ok(&bench)).unwrap();
    let level = &report["results"][0];
    assert_eq!(
        (&level["requests"], &level["errors"]),
        (&json!(3), &json!(0)),
        "{level}"
    );
    // Trust is for that certificate only.
    one_line_failure(
        ws.run(&["predict", "--url", &url, &names[0]]),
        &["TLS failed", "pass it with --cacert"],
    );
    one_line_failure(
        ws.run(&["predict", "--url", &url, "--cacert", "other.pem", &names[0]]),
        &["TLS failed", "--cacert other.pem"],
    );
    let localhost = format!("https://localhost:{port}");
    one_line_failure(
        ws.run(&[
            "bench",
            "--url",
            &localhost,
            "--protocol",
            "v1-image",
            "--cacert",
            "other.pem",
        ]),
        &["TLS failed", "--cacert other.pem"],
    );
}
