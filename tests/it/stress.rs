//! `maas serve` under a bounded burst of hostile and careless clients: slow senders, oversized
//! bodies, garbage, half-closed connections, all at once, while well-formed requests keep getting
//! correct answers; memory stays bounded; SIGTERM still drains the requests in flight.
//!
//! Everything is on loopback. Nothing here asserts how long something took: the only clocks are
//! the server's own request timeout (which the slow senders are meant to hit) and generous read
//! timeouts that turn a hung server into a failure rather than a hung test.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::server::Server;
use common::{Look, Workspace, save_image};
use maas::data::preprocess::image_bytes_to_input;
use maas::data::synthetic;
use serde_json::{Value, json};

/// The server's body limit here: small, so that oversized bodies are cheap to make.
const MAX_BODY: usize = 1 << 20;
/// Each oversized client sends this much, refused and drained by the server.
const OVERSIZED: usize = 24 << 20;
/// Oversized clients; together they send far more than the memory bound below.
const OVERSIZED_CLIENTS: usize = 8;
/// The server's request timeout: slow senders that never finish get 408 after it.
const TIMEOUT_MS: &str = "6000";
/// How much the server's peak memory may grow over the whole burst. Generous for what the server
/// legitimately holds (a few requests' bodies, decoded inputs, thread stacks), yet well below the
/// OVERSIZED_CLIENTS * OVERSIZED bytes (192 MiB) the oversized clients push at it: a server that
/// buffered refused bodies, or leaked each request's, would cross it.
const MEMORY_GROWTH_LIMIT_KB: u64 = 128 * 1024;
/// Longest a client waits for an answer before the test calls the server hung.
const READ_LIMIT: Duration = Duration::from_secs(60);

// `Server` (the running binary) is in tests/it/common/server.rs; these read its state.
impl Server {
    fn memory_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status:\n{status}"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

fn agent() -> ureq::Agent {
    common::server::agent_with_timeout(READ_LIMIT)
}

/// (status, body) of a request, whatever its status.
fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, String) {
    let mut response = result.unwrap_or_else(|e| panic!("request failed: {e}"));
    let body = response.body_mut().read_to_string().unwrap();
    (response.status().as_u16(), body)
}

fn get(url: &str) -> (u16, String) {
    answer(agent().get(url).call())
}

/// What a well-formed client sends, and what it must get back.
#[derive(Clone)]
struct GoodRequest {
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// The probabilities `maas predict` gives for the request's images, row after row.
    expected: Vec<f32>,
}

impl GoodRequest {
    /// Sends it on `agent` and checks the answer against `maas predict`.
    fn check(&self, agent: &ureq::Agent, base: &str) {
        let mut request = agent.post(&format!("{base}{}", self.path));
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        let (status, body) = match request.send(&self.body) {
            Ok(r) => {
                let status = r.status().as_u16();
                let mut body = Vec::new();
                r.into_body().into_reader().read_to_end(&mut body).unwrap();
                (status, body)
            }
            Err(e) => panic!("a well-formed request to {} failed: {e}", self.path),
        };
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{}: {text}", self.path);
        let got: Vec<f32> = if self.path.starts_with("/v1/predict") {
            // One labelled prediction with every class in top_k.
            let v: Value = serde_json::from_slice(&body).unwrap();
            let mut row = vec![f32::NAN; 10];
            for r in v["top_k"].as_array().unwrap() {
                row[r["index"].as_u64().unwrap() as usize] =
                    r["probability"].as_f64().unwrap() as f32;
            }
            row
        } else {
            common::server::output_data(&serde_json::from_slice(&body).unwrap())
        };
        assert_eq!(got.len(), self.expected.len(), "{}: {text}", self.path);
        for (i, (a, b)) in got.iter().zip(&self.expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5,
                "{} value {i}: served {a}, predict {b}",
                self.path
            );
        }
    }
}

/// The well-formed requests of the burst: JSON and binary tensors, BYTES images, `/v1/predict`.
fn good_requests(ws: &Workspace) -> Vec<GoodRequest> {
    let looks = [(Look::Rgb, 32), (Look::Grey, 48), (Look::Rgba, 20)];
    let mut pngs = Vec::new();
    for (i, (look, size)) in looks.into_iter().enumerate() {
        let name = format!("img{i}.png");
        save_image(
            &synthetic::sample_image(i, 7 + i as u64),
            &ws.path(&name),
            look,
            size,
        );
        pngs.push((name.clone(), std::fs::read(ws.path(&name)).unwrap()));
    }
    let names: Vec<String> = pngs.iter().map(|(n, _)| n.clone()).collect();
    let expected = common::predict_probabilities(ws, "model.maas", &names);
    let values: Vec<f32> = pngs
        .iter()
        .flat_map(|(_, png)| image_bytes_to_input(png).unwrap())
        .collect();
    let all: Vec<f32> = expected.iter().flatten().copied().collect();
    let json = json!({"inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32", "data": values}]});
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}]});
    let mut binary = serde_json::to_vec(&header).unwrap();
    let header_len = binary.len().to_string();
    binary.extend_from_slice(&raw);
    let mut elements = Vec::new();
    for (_, png) in &pngs {
        elements.extend_from_slice(&(png.len() as u32).to_le_bytes());
        elements.extend_from_slice(png);
    }
    let header = json!({"inputs": [{"name": "input", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": elements.len()}}]});
    let mut bytes = serde_json::to_vec(&header).unwrap();
    let bytes_len = bytes.len().to_string();
    bytes.extend_from_slice(&elements);
    let infer = "/v2/models/maas/infer";
    let length = "Inference-Header-Content-Length";
    let mut requests = vec![
        GoodRequest {
            path: infer,
            headers: vec![("Content-Type", "application/json".into())],
            body: serde_json::to_vec(&json).unwrap(),
            expected: all.clone(),
        },
        GoodRequest {
            path: infer,
            headers: vec![(length, header_len)],
            body: binary,
            expected: all.clone(),
        },
        GoodRequest {
            path: infer,
            headers: vec![(length, bytes_len)],
            body: bytes,
            expected: all,
        },
    ];
    for ((_, png), row) in pngs.iter().zip(&expected) {
        requests.push(GoodRequest {
            path: "/v1/predict?top_k=10",
            headers: vec![],
            body: png.clone(),
            expected: row.clone(),
        });
    }
    requests
}

/// Sends `bytes` on a new connection, optionally shuts down the write side, then reads until the
/// server closes the connection; returns what it answered. Write errors are returned as such: a
/// server may close a connection whose request it has refused.
fn raw_exchange(addr: &str, bytes: &[u8], half_close: bool) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
    stream.write_all(bytes).map_err(|e| format!("write: {e}"))?;
    if half_close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    read_all(&mut stream)
}

/// Reads until the server closes; a read timeout means a hung connection and fails the test.
fn read_all(stream: &mut TcpStream) -> Result<String, String> {
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!(
                "the server neither answered nor closed within {READ_LIMIT:?}; got so far: {}",
                String::from_utf8_lossy(&answer)
            )
        }
        // A reset after the answer (the server closed with unread bytes) keeps what was read.
        Err(_) if !answer.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn head(addr: &str, path: &str, content_length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {content_length}\r\n{extra}\r\n"
    )
}

fn status_of(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A client that sends its body in 20 pieces with pauses (about 0.3 s in all), finishing well
/// within the server's timeout.
fn trickle(addr: &str, png: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
    stream
        .write_all(head(addr, "/v1/predict", png.len(), "").as_bytes())
        .unwrap();
    for piece in png.chunks(png.len().div_ceil(20)) {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    read_all(&mut stream).unwrap()
}

/// A client that announces a body, trickles a few bytes of it, then goes quiet without
/// finishing; returns what the server answered.
fn never_finishes(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
    stream
        .write_all(head(addr, "/v2/models/maas/infer", 100_000, "").as_bytes())
        .unwrap();
    // Trickling stops well before the server's timeout: bytes that arrive after the server has
    // answered and closed would make its kernel reset the connection, and a reset can discard
    // the answer before this client reads it.
    for _ in 0..10 {
        stream.write_all(b"[1,").unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    read_all(&mut stream).unwrap()
}

/// Sends a request line, then one header line every 200 ms, until the server closes the
/// connection; fails if it never does.
fn slow_head(addr: &str) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut line = 0;
    let mut sent = stream.write_all(b"POST /v1/predict HTTP/1.1\r\n");
    while sent.is_ok() {
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf) {
            // Closed, with or without a 4xx first: cut off, as it should be.
            Ok(_) => return,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        assert!(
            started.elapsed() < READ_LIMIT,
            "a client trickling header lines was still connected after {READ_LIMIT:?}"
        );
        line += 1;
        sent = stream.write_all(format!("X-Slow-{line}: y\r\n").as_bytes());
    }
}

/// A body of OVERSIZED bytes, sent with Content-Length or chunked; the server must refuse it with
/// 413 without holding it.
fn oversized(addr: &str, chunked: bool) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
    let head = if chunked {
        format!(
            "POST /v1/predict HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    } else {
        head(addr, "/v1/predict", OVERSIZED, "")
    };
    let piece = vec![b'x'; 64 << 10];
    let send = |stream: &mut TcpStream| -> std::io::Result<()> {
        stream.write_all(head.as_bytes())?;
        for _ in 0..OVERSIZED / piece.len() {
            if chunked {
                stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                stream.write_all(&piece)?;
                stream.write_all(b"\r\n")?;
            } else {
                stream.write_all(&piece)?;
            }
        }
        if chunked {
            stream.write_all(b"0\r\n\r\n")?;
        }
        Ok(())
    };
    send(&mut stream).map_err(|e| format!("write: {e}"))?;
    read_all(&mut stream)
}

#[test]
fn a_hostile_burst_leaves_good_requests_answered_memory_bounded_and_shutdown_clean() {
    let ws = Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "2", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    let good = good_requests(&ws);
    let max_body = MAX_BODY.to_string();
    let mut server = Server::start(
        &ws,
        &["--timeout-ms", TIMEOUT_MS, "--max-body-bytes", &max_body],
    );
    let base = format!("http://{}", server.addr());
    let addr = server.addr().to_string();
    // Warm up: every kind of good request once, so that the baseline includes the model's and
    // the runtime's steady state rather than first-use allocations.
    let warm = agent();
    for request in &good {
        request.check(&warm, &base);
    }
    let (rss_before, hwm_before) = server.memory_kb();

    let mut clients: Vec<std::thread::JoinHandle<()>> = Vec::new();
    // Well-formed clients, each on its own keep-alive connection, all the burst long.
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    for c in 0..6 {
        let (good, base, done, answered) = (
            good.clone(),
            base.clone(),
            Arc::clone(&done),
            Arc::clone(&answered),
        );
        clients.push(std::thread::spawn(move || {
            let agent = agent();
            let mut i = c;
            // At least one round of every kind, then on until the hostile clients are done.
            while i < c + good.len() || !done.load(Ordering::SeqCst) {
                good[i % good.len()].check(&agent, &base);
                answered.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    let mut hostile: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let png = good
        .iter()
        .find(|r| r.path.starts_with("/v1/predict"))
        .unwrap()
        .body
        .clone();
    // Slow senders that finish: answered normally.
    for _ in 0..4 {
        let (addr, png) = (addr.clone(), png.clone());
        hostile.push(std::thread::spawn(move || {
            let answer = trickle(&addr, &png);
            assert_eq!(status_of(&answer), Some(200), "{answer}");
            assert!(answer.contains("\"label\":"), "{answer}");
        }));
    }
    // Slow senders that never finish: 408 at the server's timeout, holding nothing else.
    for _ in 0..4 {
        let addr = addr.clone();
        hostile.push(std::thread::spawn(move || {
            let answer = never_finishes(&addr);
            assert_eq!(status_of(&answer), Some(408), "{answer}");
        }));
    }
    // Oversized bodies, declared and chunked: 413, drained rather than held.
    for i in 0..OVERSIZED_CLIENTS {
        let addr = addr.clone();
        hostile.push(std::thread::spawn(move || {
            match oversized(&addr, i % 2 == 1) {
                Ok(answer) => assert_eq!(status_of(&answer), Some(413), "{answer}"),
                // The server stops draining a refused body after a bound; then the client sees
                // its connection closed while still sending, which is the bound at work.
                Err(e) => assert!(e.starts_with("write"), "{e}"),
            }
        }));
    }
    // Garbage: not HTTP at all; HTTP with a garbage body on every body-taking route.
    for i in 0..6u8 {
        let addr = addr.clone();
        hostile.push(std::thread::spawn(move || {
            let noise: Vec<u8> = (0..4000u32)
                .map(|j| (j.wrapping_mul(2_654_435_761) >> (i + 3)) as u8)
                .collect();
            let answer = raw_exchange(&addr, &noise, false);
            // Either a 400 or a closed connection; never an answer that pretends success.
            if let Ok(answer) = &answer {
                assert!(
                    answer.is_empty() || status_of(answer) == Some(400),
                    "{answer}"
                );
            }
            for path in ["/v2/models/maas/infer", "/v1/predict"] {
                let mut request = head(&addr, path, noise.len(), "").into_bytes();
                request.extend_from_slice(&noise);
                let answer = raw_exchange(&addr, &request, false).unwrap();
                assert_eq!(status_of(&answer), Some(400), "{path}: {answer}");
                assert!(answer.contains("{\"error\":"), "{answer}");
            }
            let header = head(
                &addr,
                "/v2/models/maas/infer",
                noise.len(),
                "Inference-Header-Content-Length: 100\r\n",
            );
            let mut request = header.into_bytes();
            request.extend_from_slice(&noise);
            let answer = raw_exchange(&addr, &request, false).unwrap();
            assert_eq!(status_of(&answer), Some(400), "{answer}");
        }));
    }
    // Half-closed connections: the client shuts down its write side mid-head or mid-body (the
    // server must end the exchange, not wait for bytes that cannot come), or after its whole
    // request (it must still get its answer).
    for i in 0..6 {
        let (addr, png) = (addr.clone(), png.clone());
        hostile.push(std::thread::spawn(move || {
            let mut request = head(&addr, "/v1/predict", png.len(), "").into_bytes();
            request.extend_from_slice(&png);
            let cut = [20, request.len() - png.len() / 2, request.len()][i % 3];
            let answer = raw_exchange(&addr, &request[..cut], true).unwrap();
            if cut == request.len() {
                assert_eq!(status_of(&answer), Some(200), "{answer}");
                assert!(answer.contains("\"label\":"), "{answer}");
            } else {
                assert!(
                    answer.is_empty() || status_of(&answer) == Some(400),
                    "{answer}"
                );
            }
        }));
    }
    // Slow heads: header lines trickled for ever. The request deadline starts with the body, so
    // the server must cut these off by a head timeout of its own.
    for _ in 0..3 {
        let addr = addr.clone();
        hostile.push(std::thread::spawn(move || slow_head(&addr)));
    }
    for client in hostile {
        client.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    let answered = answered.load(Ordering::SeqCst);
    assert!(answered >= 6 * good.len(), "{answered}");

    // Nothing of the burst is left in progress: every refused or abandoned request gave its place
    // back. (The server may still be finishing the last drains; it gets a bounded while.)
    let settle = Instant::now();
    while server.metric("maas_requests_in_progress") != 0.0 {
        assert!(
            settle.elapsed() < READ_LIMIT,
            "requests still in progress after the burst:\n{}",
            get(&server.url("/metrics")).1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (rss_after, hwm_after) = server.memory_kb();
    eprintln!(
        "server memory: before the burst VmRSS {rss_before} kB, VmHWM {hwm_before} kB; \
         after VmRSS {rss_after} kB, VmHWM {hwm_after} kB; {answered} good requests answered"
    );
    assert!(
        hwm_after.saturating_sub(rss_before) < MEMORY_GROWTH_LIMIT_KB,
        "peak memory grew from {rss_before} kB to {hwm_after} kB during the burst"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < MEMORY_GROWTH_LIMIT_KB,
        "memory grew from {rss_before} kB to {rss_after} kB and stayed"
    );

    // SIGTERM with requests in flight (head and half the body sent) and an idle connection:
    // the requests are finished and answered, the idle connection does not hold the exit.
    let in_flight: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).unwrap();
            stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
            stream
                .write_all(head(&addr, "/v1/predict", png.len(), "").as_bytes())
                .unwrap();
            stream.write_all(&png[..png.len() / 2]).unwrap();
            stream
        })
        .collect();
    let _idle = TcpStream::connect(&addr).unwrap();
    // The server must have read the heads before the signal for them to count as in flight;
    // in_progress says when it has.
    let started = Instant::now();
    while server.metric("maas_requests_in_progress") < 3.0 {
        assert!(started.elapsed() < READ_LIMIT, "the requests never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.terminate();
    // New connections are refused once it has stopped accepting.
    let signalled = Instant::now();
    while TcpStream::connect(&addr).is_ok() {
        assert!(
            signalled.elapsed() < READ_LIMIT,
            "still accepting after SIGTERM"
        );
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "exited with requests in flight"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut stream in in_flight {
        stream.write_all(&png[png.len() / 2..]).unwrap();
        let answer = read_all(&mut stream).unwrap();
        assert_eq!(status_of(&answer), Some(200), "{answer}");
        assert!(answer.contains("\"label\":"), "{answer}");
    }
    let code = server.wait(READ_LIMIT);
    assert_eq!(code, Some(0), "stderr:\n{}", server.stderr());
    assert!(server.stderr().contains("SIGTERM"), "{}", server.stderr());
}

/// Issue 28, point 12: after a burst of large requests the memory they took goes back to the
/// system once the server is idle (glibc kept it: 2.4 GB held after 200 bodies of 16 MiB).
#[test]
fn memory_taken_by_a_burst_of_large_requests_is_given_back_when_idle() {
    let ws = Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    let server = Server::start(&ws, &["--timeout-ms", "60000"]);
    let url = server.url("/v2/models/maas/infer");
    // Binary FP32 requests of 1,000 images (12 MB each): body, decoded values and batches.
    let images = 1000;
    let header = json!({"inputs": [{"name": "input", "shape": [images, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": images * 3072 * 4}}]});
    let mut body = serde_json::to_vec(&header).unwrap();
    let header_length = body.len().to_string();
    body.extend(std::iter::repeat_n(0.5f32.to_le_bytes(), images * 3072).flatten());
    let send = |agent: &ureq::Agent| {
        let (status, text) = answer(
            agent
                .post(&url)
                .header("Inference-Header-Content-Length", &header_length)
                .send(&body[..]),
        );
        assert_eq!(status, 200, "{text}");
    };
    send(&agent());
    let (rss_before, _) = server.memory_kb();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let agent = agent();
                for _ in 0..4 {
                    send(&agent);
                }
            });
        }
    });
    let (rss_burst, hwm) = server.memory_kb();
    // Idle now: the server gives back what the burst took within a few of its polls.
    let idle = Instant::now();
    let mut rss_idle = rss_burst;
    while idle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(250));
        rss_idle = server.memory_kb().0;
        if rss_idle.saturating_sub(rss_before) < 64 * 1024 {
            break;
        }
    }
    eprintln!(
        "server memory: VmRSS {rss_before} kB before the burst, {rss_burst} kB after it \
         (VmHWM {hwm} kB), {rss_idle} kB idle {:.1} s later",
        idle.elapsed().as_secs_f64()
    );
    assert!(
        rss_idle.saturating_sub(rss_before) < 64 * 1024,
        "the burst's memory stayed: VmRSS {rss_before} kB before, {rss_idle} kB idle after"
    );
}
