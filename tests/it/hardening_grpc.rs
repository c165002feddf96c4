//! `maas serve --grpc-port` against what issue 28 found on the gRPC endpoint: messages that
//! decoded into gigabytes before the key was checked, connections never closed, an accept loop
//! that spun out of file descriptors, output parameters REST refuses, refusals missing from
//! `/metrics`, two messages in a unary call, versions `+1` and `01`, and health behind stalled
//! uploads.
//!
//! Clients are grpcio and tritonclient (tests/python/grpc_hardening.py) and, for what those
//! cannot do (stay silent, stall an upload, watch for pings), raw HTTP/2 frames on a socket.
//! Everything is on loopback; timings are not asserted, only limits that turn a hung server into a
//! failure.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{Server, agent};
use common::{Workspace, wait_until};
use serde_json::Value;

const KEY: &str = "inference-key";

/// A workspace with a small trained model exported as `model.maas`.
fn workspace_with_model() -> Workspace {
    let ws = Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    ws
}

/// `maas serve` of the workspace's model with gRPC on a free port: (server, gRPC address).
fn grpc_server(ws: &Workspace, extra: &[&str]) -> (Server, String) {
    let mut args = vec!["--grpc-port", "0"];
    args.extend_from_slice(extra);
    let server = Server::start(ws, &args);
    let grpc = server.grpc_addr();
    (server, grpc)
}

/// Runs tests/python/grpc_hardening.py with `args`; what it saw, as JSON.
fn run_script(args: &[&str], server: &Server) -> Value {
    let here = std::env::current_dir().unwrap();
    common::server::run_python("grpc_hardening.py", &here, args, server)
}

/// The `[code, message]` the script recorded, as (code, message).
fn outcome<'a>(seen: &'a Value, key: &str) -> (&'a str, &'a str) {
    let pair = &seen[key];
    (
        pair[0]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {seen}")),
        pair[1].as_str().unwrap(),
    )
}

/// A field of /proc/PID/status in kB (`VmHWM`: the peak resident memory).
fn proc_status_kb(server: &Server, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// The CPU time the server process has used so far, in seconds.
fn cpu_seconds(server: &Server) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.child.id())).unwrap();
    // utime and stime: the 12th and 13th fields after the command name, which ends with ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    let per_second: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    ticks / per_second
}

/// `/metrics`' count of `route` answered with `status` (0 when there is no such line).
fn requests_counted(server: &Server, route: &str, status: u16) -> f64 {
    let metrics = agent()
        .get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let label = format!("maas_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&label))
        .map_or(0.0, |n| n.parse().unwrap())
}

// Raw HTTP/2: the client preface, frames, and a request head in HPACK without Huffman coding or
// the dynamic table (RFC 7540, RFC 7541), enough to open a call and leave it unfinished.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The head of a gRPC call to `path`: POST, http, then literal fields named from the static
/// table (`:path` 4, `:authority` 1, `content-type` 31) or by name (`te`).
fn call_head(path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86];
    let mut literal = |name_index: u8, name: &str, value: &str| {
        match name_index {
            0 => {
                block.extend_from_slice(&[0x00, name.len() as u8]);
                block.extend_from_slice(name.as_bytes());
            }
            1..15 => block.push(name_index),
            _ => block.extend_from_slice(&[0x0f, name_index - 15]),
        }
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    };
    literal(4, "", path);
    literal(1, "", "localhost");
    literal(31, "", "application/grpc");
    literal(0, "te", "trailers");
    block
}

/// A connection that has sent the preface and its settings (none).
fn h2_connect(addr: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(PREFACE).unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    tcp
}

/// Opens call `stream` to `path` and sends nothing more: an upload that stalls.
fn stall_call(tcp: &mut TcpStream, stream: u32, path: &str) {
    let head = call_head(path);
    tcp.write_all(&frame(HEADERS, END_HEADERS, stream, &head))
        .unwrap();
}

/// What the server sent until it closed the connection: the kinds of its frames, or `None` when
/// the connection was still open after `limit`. When `answer`, answers the server's pings and
/// settings, as a live client does.
fn frames_until_closed(tcp: &mut TcpStream, limit: Duration, answer: bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut pending = Vec::new();
    let mut kinds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        tcp.set_read_timeout(Some(left)).unwrap();
        match tcp.read(&mut buf) {
            Ok(0) => return Some(kinds),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            // A reset is a close too.
            Err(_) => return Some(kinds),
        }
        while pending.len() >= 9 {
            let len = u32::from_be_bytes([0, pending[0], pending[1], pending[2]]) as usize;
            if pending.len() < 9 + len {
                break;
            }
            let (kind, flags) = (pending[3], pending[4]);
            let payload = pending[9..9 + len].to_vec();
            pending.drain(..9 + len);
            kinds.push(kind);
            // Answers fail once the server has closed; the read then says so.
            let _ = match (kind, flags & ACK) {
                _ if !answer => Ok(()),
                (PING, 0) => tcp.write_all(&frame(PING, ACK, 0, &payload)),
                (SETTINGS, 0) => tcp.write_all(&frame(SETTINGS, ACK, 0, &[])),
                _ => Ok(()),
            };
        }
    }
}

// Issue 28, point 2: 16 MB of 8 million empty `inputs` (2 bytes each on the wire) decoded into
// 2.45 GB before the missing key was noticed; with the key, the same into an answer of 400.
#[test]
fn empty_entry_floods_are_refused_before_they_take_memory() {
    let ws = workspace_with_model();
    let (server, grpc) = grpc_server(&ws, &["--api-key", KEY]);
    let before = proc_status_kb(&server, "VmHWM");
    let seen = run_script(&["flood", &grpc, KEY], &server);
    let peak = proc_status_kb(&server, "VmHWM");
    eprintln!("peak resident memory {before} kB before the floods, {peak} kB after: {seen}");

    // The messages themselves (16 MB, read once each), not gigabytes of decoded entries.
    assert!(
        peak - before < 300_000,
        "peak resident memory grew from {before} kB to {peak} kB"
    );
    assert_eq!(
        outcome(&seen, "inputs_without_key").0,
        "StatusCode.UNAUTHENTICATED",
        "{seen}"
    );
    for flood in ["inputs_with_key", "outputs_with_key"] {
        let (code, message) = outcome(&seen, flood);
        assert_eq!(code, "StatusCode.RESOURCE_EXHAUSTED", "{seen}");
        assert!(
            message.contains("more than 65536 entries"),
            "{flood}: {message}"
        );
    }
    assert_eq!(outcome(&seen, "valid_after").0, "OK", "{seen}");
}

// Issue 28, point 4: connections with or without the HTTP/2 preface were still open after 120 s at
// --timeout-ms 3000, and no ping checked a peer in the middle of a call.
#[test]
fn idle_grpc_connections_are_closed_and_calls_pinged() {
    let ws = workspace_with_model();
    let (server, grpc) = grpc_server(&ws, &["--timeout-ms", "2000"]);
    let limit = Duration::from_secs(30);

    let mut silent = TcpStream::connect(&grpc).unwrap();
    let mut greeted = h2_connect(&grpc);
    let mut calling = h2_connect(&grpc);
    stall_call(
        &mut calling,
        1,
        "/inference.GRPCInferenceService/ModelInfer",
    );

    // Read side by side: a live client answers pings as they come.
    let (silent, greeted, calling) = std::thread::scope(|threads| {
        let silent = threads.spawn(|| frames_until_closed(&mut silent, limit, false));
        let greeted = threads.spawn(|| frames_until_closed(&mut greeted, limit, true));
        let calling = threads.spawn(|| frames_until_closed(&mut calling, limit, true));
        (
            silent.join().unwrap(),
            greeted.join().unwrap(),
            calling.join().unwrap(),
        )
    });
    assert!(
        silent.is_some(),
        "a connection that never sent the preface was still open after {limit:?}"
    );
    let greeted = greeted
        .unwrap_or_else(|| panic!("an idle HTTP/2 connection was still open after {limit:?}"));
    assert!(
        greeted.contains(&GOAWAY),
        "closed without GOAWAY: {greeted:?}"
    );
    let calling = calling
        .unwrap_or_else(|| panic!("a connection with a stalled call was open after {limit:?}"));
    assert!(
        calling.contains(&PING),
        "no ping during a stalled call: {calling:?}"
    );
    // The server still answers.
    assert_eq!(
        agent()
            .get(&server.url("/v2/health/live"))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

// Issue 28, point 4: out of file descriptors, the gRPC accept loop retried at once, without end
// (12.8 s of CPU in 15 s).
#[cfg(target_os = "linux")]
#[test]
fn accept_errors_back_off_instead_of_spinning() {
    let ws = workspace_with_model();
    let (server, grpc) = grpc_server(&ws, &["--timeout-ms", "60000"]);
    let pid = server.child.id() as libc::pid_t;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let mut original = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit only writes the current limits into `original`.
    let read = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut original) };
    assert_eq!(read, 0, "prlimit: {}", std::io::Error::last_os_error());
    let set_limit = |soft: u64| {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: original.rlim_max,
        };
        // SAFETY: prlimit only reads `limit` (the old value is not asked for).
        let done = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
        assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    set_limit(open + 4);
    // More connections than descriptors: the rest wait in the backlog, and accept fails on them.
    let rest = server.addr().to_string();
    let clients: Vec<TcpStream> = (0..40)
        .map(|i| TcpStream::connect(if i % 2 == 0 { &grpc } else { &rest }).unwrap())
        .collect();
    // Once the server holds every descriptor it may, accept fails on what is left.
    let held = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64
    };
    assert!(
        wait_until(Duration::from_secs(60), || held() >= open + 4),
        "the server holds {} descriptors, not {}",
        held(),
        open + 4
    );
    let before = cpu_seconds(&server);
    // The point: two seconds out of descriptors, measured.
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_seconds(&server) - before;
    drop(clients);
    set_limit(original.rlim_cur);
    assert!(
        spent < 0.5,
        "the server used {spent:.2} s of CPU in 2 s, idle but out of descriptors"
    );
    // With descriptors again, both ports answer.
    let health = agent().get(&server.url("/v2/health/live")).call().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let seen = run_script(&["live", &grpc], &server);
    assert_eq!(outcome(&seen, "live").0, "OK", "{seen}");
}

// Issue 28, points 8 and 16: output parameters REST refuses were accepted, refusals by tonic
// (malformed, oversize, compressed) were not counted in /metrics, a unary call with two messages
// was answered, and versions `+1` and `01` named version 1.
#[test]
fn grpc_refuses_what_rest_refuses_and_counts_every_refusal() {
    let ws = workspace_with_model();
    let max_body = "100000";
    let (server, grpc) = grpc_server(&ws, &["--max-body-bytes", max_body]);
    let seen = run_script(&["refusals", &grpc, max_body], &server);
    eprintln!("{seen}");

    assert_eq!(outcome(&seen, "valid").0, "OK", "{seen}");
    assert_eq!(outcome(&seen, "version_1").0, "OK", "{seen}");
    for version in ["version_plus_1", "version_01"] {
        assert_eq!(
            outcome(&seen, version).0,
            "StatusCode.NOT_FOUND",
            "{version}: {seen}"
        );
    }
    let (code, message) = outcome(&seen, "two_messages");
    assert_eq!(code, "StatusCode.INVALID_ARGUMENT", "{seen}");
    assert!(message.contains("more than one message"), "{message}");
    for (parameter, words) in [
        (
            "classification",
            "classification extension is not supported",
        ),
        ("shared_memory", "shared memory is not supported"),
    ] {
        let (code, message) = outcome(&seen, parameter);
        assert_eq!(code, "StatusCode.INVALID_ARGUMENT", "{parameter}: {seen}");
        assert!(message.contains(words), "{parameter}: {message}");
    }
    assert_eq!(
        outcome(&seen, "malformed").0,
        "StatusCode.INVALID_ARGUMENT",
        "{seen}"
    );
    assert_eq!(outcome(&seen, "oversize").0, "StatusCode.OUT_OF_RANGE");
    assert_eq!(
        outcome(&seen, "compressed").0,
        "StatusCode.UNIMPLEMENTED",
        "{seen}"
    );

    let infer = "/inference.GRPCInferenceService/ModelInfer";
    // valid and version 1 answered; the two versions, the two messages and the two output
    // parameters refused as not found or bad; and each of tonic's own refusals.
    assert_eq!(requests_counted(&server, infer, 200), 2.0);
    assert_eq!(requests_counted(&server, infer, 404), 2.0);
    assert_eq!(requests_counted(&server, infer, 400), 4.0);
    assert_eq!(requests_counted(&server, infer, 413), 1.0);
    assert_eq!(requests_counted(&server, infer, 501), 1.0);
}

// Issue 28, point 17: with --max-queue 4, ServerLive waited 6 s behind stalled uploads, where
// probes give up after a second.
#[test]
fn grpc_health_answers_while_uploads_stall() {
    let ws = workspace_with_model();
    let (server, grpc) = grpc_server(&ws, &["--max-queue", "2", "--timeout-ms", "60000"]);
    // Two calls whose messages never come hold both places.
    let mut stalled = h2_connect(&grpc);
    stall_call(
        &mut stalled,
        1,
        "/inference.GRPCInferenceService/ModelInfer",
    );
    stall_call(
        &mut stalled,
        3,
        "/inference.GRPCInferenceService/ModelInfer",
    );
    // Time for the server to read the two heads and give them the places: nothing outside the
    // server shows when it has (the gate's places are not in /metrics).
    std::thread::sleep(Duration::from_millis(500));
    let seen = run_script(&["live", &grpc], &server);
    assert_eq!(outcome(&seen, "live").0, "OK", "{seen}");
    assert_eq!(outcome(&seen, "ready").0, "OK", "{seen}");
    assert_eq!(seen["live_value"], true, "{seen}");
    drop(stalled);
}
