//! `maas train` fetches CIFAR-10 when it is missing: here from a local HTTP server serving a small
//! generated archive, never from the network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::thread;

use common::Workspace;
use maas::data::synthetic;
use md5::{Digest, Md5};

/// Serves `body` to `requests` requests on a free loopback port; returns the archive's URL.
fn serve(body: Vec<u8>, status: u16, requests: usize) -> (String, thread::JoinHandle<()>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let handle = thread::spawn(move || {
        for _ in 0..requests {
            let Ok(Some(request)) = server.recv_timeout(std::time::Duration::from_secs(60)) else {
                return;
            };
            let _ = request
                .respond(tiny_http::Response::from_data(body.clone()).with_status_code(status));
        }
    });
    (
        format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz"),
        handle,
    )
}

fn archive() -> (Vec<u8>, String) {
    let src = tempfile::tempdir().unwrap();
    synthetic::write_cifar10_dir(src.path(), 20, 50, 3).unwrap();
    let bytes = synthetic::cifar10_targz(src.path()).unwrap();
    let md5 = format!("{:x}", Md5::digest(&bytes));
    (bytes, md5)
}

fn empty_workspace() -> Workspace {
    let ws = Workspace::new(1, 1);
    std::fs::remove_dir_all(ws.path("data")).unwrap();
    ws
}

#[test]
fn train_downloads_verifies_and_installs_a_missing_dataset() {
    let (bytes, md5) = archive();
    let (url, server) = serve(bytes, 200, 1);
    let ws = empty_workspace();
    let (code, out, err) = ws.run(&[
        "train",
        "--epochs",
        "1",
        "--json",
        "--cifar10-url",
        &url,
        "--cifar10-md5",
        &md5,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&url), "the download is announced: {err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["epochs"], 1);
    let installed: Vec<_> = std::fs::read_dir(ws.path("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        installed,
        vec![std::ffi::OsString::from("cifar-10-batches-bin")],
        "nothing else is left in data/"
    );
    server.join().unwrap();
    // The second run finds the dataset and does not download again (the server is gone).
    ws.ok(&[
        "train",
        "--epochs",
        "2",
        "--resume",
        "--quiet",
        "--cifar10-url",
        &url,
    ]);
}

#[test]
fn a_wrong_checksum_leaves_nothing_behind() {
    let (bytes, _) = archive();
    let (url, server) = serve(bytes, 200, 1);
    let ws = empty_workspace();
    let wrong = "0123456789abcdef0123456789abcdef";
    let (code, _, err) = ws.run(&["train", "--cifar10-url", &url, "--cifar10-md5", wrong]);
    assert_eq!(code, 1);
    assert!(err.contains("MD5") || err.contains("md5"), "{err}");
    assert!(!err.contains("panicked"));
    let left: Vec<_> = std::fs::read_dir(ws.path("data"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    server.join().unwrap();
}

#[test]
fn an_http_error_or_a_dead_server_is_a_clear_error() {
    let (url, server) = serve(b"not found".to_vec(), 404, 1);
    let ws = empty_workspace();
    let (code, _, err) = ws.run(&["train", "--cifar10-url", &url]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    server.join().unwrap();
    // Nothing listens on the port any more.
    let (code, _, err) = ws.run(&["train", "--cifar10-url", &url]);
    assert_eq!(code, 1);
    assert!(err.contains(&url), "{err}");
    assert!(!ws.path("data/cifar-10-batches-bin").exists());
}
