//! `maas serve` as clients see it: the real binary on a free loopback port, called over HTTP the
//! way the Triton and KServe clients, curl and Prometheus call it.
// The helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::{Server, agent};
use common::{Look, Workspace, save_image, wait_until, write_class_folder};
use image::RgbImage;
use maas::data::preprocess::image_bytes_to_input;
use maas::data::synthetic;
use serde_json::{Value, json};

// `Server` (the running binary) is in tests/it/common/server.rs; these are its HTTP calls.
impl Server {
    fn get(&self, path: &str) -> Reply {
        send(agent().get(&self.url(path)).call())
    }

    fn post(&self, path: &str, body: &[u8]) -> Reply {
        send(agent().post(&self.url(path)).send(body))
    }

    fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post(path, &serde_json::to_vec(body).unwrap())
    }
}

/// An HTTP answer, whatever its status.
struct Reply {
    status: u16,
    content_type: String,
    header_length: Option<usize>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the documented error shape: this status and `{"error": MESSAGE}`.
    fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert!(
            self.content_type.starts_with("application/json"),
            "{}",
            self.content_type
        );
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {}", self.text()))
            .to_string()
    }
}

fn send(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let response = result.unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = response.status().as_u16();
    let content_type = header(&response, "content-type")
        .unwrap_or_default()
        .to_string();
    let header_length =
        header(&response, "inference-header-content-length").map(|v| v.parse().unwrap());
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut body)
        .unwrap();
    Reply {
        status,
        content_type,
        header_length,
        body,
    }
}

/// A header of `response` as text; `None` when it is missing or not text.
fn header<'a, B>(response: &'a ureq::http::Response<B>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn post_with(server: &Server, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut request = agent().post(&server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.send(body))
}

fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().get(&server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.call())
}

/// A workspace with a small trained model exported as `model.maas`.
fn workspace_with_model() -> Workspace {
    let ws = Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "2", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    ws
}

/// Writes `n` test images of different classes, sizes and colour types; returns (name, bytes).
/// The second is a 300x200 JPEG photo, decoded at a reduced DCT scale.
fn images(ws: &Workspace, n: usize) -> Vec<(String, Vec<u8>)> {
    let looks = [
        (Look::Rgb, 32),
        (Look::Grey, 48),
        (Look::Rgba, 20),
        (Look::Rgb, 64),
    ];
    (0..n)
        .map(|i| {
            let chw = synthetic::sample_image(i, 100 + i as u64);
            let name = if i == 1 {
                let name = format!("img{i}.jpg");
                let small = RgbImage::from_raw(32, 32, synthetic::chw_to_hwc(&chw)).unwrap();
                image::imageops::resize(&small, 300, 200, image::imageops::FilterType::Triangle)
                    .save(ws.path(&name))
                    .unwrap();
                name
            } else {
                let name = format!("img{i}.png");
                let (look, size) = looks[i % looks.len()];
                save_image(&chw, &ws.path(&name), look, size);
                name
            };
            (name.clone(), std::fs::read(ws.path(&name)).unwrap())
        })
        .collect()
}

/// The FP32 tensor of the images, made by the same preprocessing `predict` uses.
fn fp32_tensor(images: &[(String, Vec<u8>)]) -> Vec<f32> {
    images
        .iter()
        .flat_map(|(_, bytes)| image_bytes_to_input(bytes).unwrap())
        .collect()
}

fn infer_json(values: &[f32], rows: usize) -> Value {
    json!({"id": "req-42", "inputs": [{"name": "input", "shape": [rows, 3, 32, 32], "datatype": "FP32", "data": values}]})
}

fn output_data(reply: &Reply) -> Vec<f32> {
    common::server::output_data(&reply.json())
}

fn assert_close(got: &[f32], expected: &[Vec<f32>]) {
    let flat: Vec<f32> = expected.iter().flatten().copied().collect();
    assert_eq!(got.len(), flat.len());
    for (i, (a, b)) in got.iter().zip(&flat).enumerate() {
        assert!((a - b).abs() <= 1e-5, "value {i}: served {a}, predict {b}");
    }
}

/// A body as `tritonclient.http` builds it with binary inputs: the JSON header, then raw bytes.
fn binary_body(header: &Value, raw: &[u8]) -> (Vec<u8>, String) {
    let mut body = serde_json::to_vec(header).unwrap();
    let len = body.len().to_string();
    body.extend_from_slice(raw);
    (body, len)
}

/// Standard base64 with padding, to build requests the way clients do.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn health_metadata_and_readiness_follow_the_v2_protocol() {
    let ws = workspace_with_model();
    let server = Server::start(&ws, &[]);
    assert!(
        server
            .stderr()
            .contains("(model maas from model.maas, device cpu"),
        "{}",
        server.stderr()
    );
    let live = server.get("/v2/health/live");
    assert_eq!((live.status, live.json()), (200, json!({"live": true})));
    let ready = server.get("/v2/health/ready");
    assert_eq!((ready.status, ready.json()), (200, json!({"ready": true})));
    let meta = server.get("/v2").json();
    assert_eq!(meta["name"], "maas");
    assert_eq!(meta["version"], maas::VERSION);
    assert_eq!(
        meta["extensions"],
        json!(["binary_tensor_data", "model_repository", "statistics"])
    );
    for path in ["/v2/models/maas", "/v2/models/maas/versions/1"] {
        let model = server.get(path);
        assert_eq!(model.status, 200, "{path}");
        let model = model.json();
        assert_eq!(model["name"], "maas");
        assert_eq!(model["platform"], "maas");
        assert_eq!(
            model["inputs"],
            json!([{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}])
        );
        assert_eq!(
            model["outputs"],
            json!([{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}])
        );
        assert_eq!(model["classes"][3], "cat");
    }
    for path in ["/v2/models/maas/ready", "/v2/models/maas/versions/1/ready"] {
        assert_eq!(server.get(path).json()["ready"], true, "{path}");
    }
    assert!(
        server
            .get("/v2/models/resnet")
            .assert_error(404)
            .contains("resnet")
    );
    server.get("/v2/models/resnet/ready").assert_error(404);
    server.get("/v2/models/maas/versions/7").assert_error(404);
    server
        .post("/v2/models/resnet/infer", b"{}")
        .assert_error(404);
    server
        .post("/v2/models/resnet/infer", &vec![b' '; 8 << 20])
        .assert_error(404);
    server
        .post("/v2/nothing", &vec![b' '; 8 << 20])
        .assert_error(404);
    server.get("/nothing/here").assert_error(404);
    server.get("/v2/models/maas/infer").assert_error(405);
}

#[test]
fn json_infer_agrees_with_predict() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 3);
    let names: Vec<String> = imgs.iter().map(|(n, _)| n.clone()).collect();
    let expected = common::predict_probabilities(&ws, "model.maas", &names);
    let server = Server::start(&ws, &[]);
    let values = fp32_tensor(&imgs);
    let reply = server.post_json("/v2/models/maas/infer", &infer_json(&values, 3));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.header_length.is_none());
    let v = reply.json();
    assert_eq!(
        (v["model_name"].as_str(), v["id"].as_str()),
        (Some("maas"), Some("req-42"))
    );
    assert_eq!(v["outputs"][0]["name"], "probabilities");
    assert_eq!(v["outputs"][0]["datatype"], "FP32");
    assert_eq!(v["outputs"][0]["shape"], json!([3, 10]));
    assert_close(&output_data(&reply), &expected);
    // Nested data, the versioned path and an explicit JSON output ask for the same thing.
    let nested: Vec<Vec<f32>> = values.chunks(32).map(<[f32]>::to_vec).collect();
    let body = json!({
        "inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32", "data": nested}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": false}}]
    });
    let reply = server.post_json("/v2/models/maas/versions/1/infer", &body);
    assert!(reply.json().get("id").is_none());
    assert_close(&output_data(&reply), &expected);
}

#[test]
fn binary_tensor_extension_agrees_with_predict() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 3);
    let names: Vec<String> = imgs.iter().map(|(n, _)| n.clone()).collect();
    let expected = common::predict_probabilities(&ws, "model.maas", &names);
    let server = Server::start(&ws, &[]);
    let raw: Vec<u8> = fp32_tensor(&imgs)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // What tritonclient.http sends by default: binary inputs and, with no outputs named,
    // binary_data_output for all of them.
    let header = json!({
        "id": "t1",
        "inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"binary_data_output": true}
    });
    let (body, len) = binary_body(&header, &raw);
    let reply = post_with(
        &server,
        "/v2/models/maas/infer",
        &[("Inference-Header-Content-Length", &len)],
        &body,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type, "application/octet-stream");
    let json_len = reply
        .header_length
        .expect("Inference-Header-Content-Length on a binary response");
    let head: Value = serde_json::from_slice(&reply.body[..json_len]).unwrap();
    assert_eq!(head["id"], "t1");
    let output = &head["outputs"][0];
    assert_eq!(
        (output["name"].as_str(), output["datatype"].as_str()),
        (Some("probabilities"), Some("FP32"))
    );
    assert_eq!(output["shape"], json!([3, 10]));
    assert_eq!(output["parameters"]["binary_data_size"], 120);
    assert!(output.get("data").is_none());
    let probs: Vec<f32> = reply.body[json_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_close(&probs, &expected);
    // Binary in, JSON out, when the output asks for it.
    let header = json!({
        "inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": false}}]
    });
    let (body, len) = binary_body(&header, &raw);
    let reply = post_with(
        &server,
        "/v2/models/maas/infer",
        &[("Inference-Header-Content-Length", &len)],
        &body,
    );
    assert!(reply.header_length.is_none());
    assert_close(&output_data(&reply), &expected);
    // NaN in a binary tensor is refused, and the server stays up.
    let mut bad = raw.clone();
    bad[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let (body, len) = binary_body(&header, &bad);
    let message = post_with(
        &server,
        "/v2/models/maas/infer",
        &[("Inference-Header-Content-Length", &len)],
        &body,
    )
    .assert_error(400);
    assert!(message.contains("NaN"), "{message}");
    let (body, _) = binary_body(&header, &raw);
    post_with(
        &server,
        "/v2/models/maas/infer",
        &[("Inference-Header-Content-Length", "999999")],
        &body,
    )
    .assert_error(400);
    assert_eq!(server.get("/v2/health/ready").status, 200);
}

#[test]
fn bytes_input_takes_encoded_images_in_json_and_binary() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 3);
    let names: Vec<String> = imgs.iter().map(|(n, _)| n.clone()).collect();
    let expected = common::predict_probabilities(&ws, "model.maas", &names);
    let server = Server::start(&ws, &[]);
    let data = json!([base64(&imgs[0].1), {"b64": base64(&imgs[1].1)}, base64(&imgs[2].1)]);
    let body =
        json!({"inputs": [{"name": "input", "shape": [3], "datatype": "BYTES", "data": data}]});
    let reply = server.post_json("/v2/models/maas/infer", &body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_close(&output_data(&reply), &expected);
    let mut raw = Vec::new();
    for (_, bytes) in &imgs {
        raw.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        raw.extend_from_slice(bytes);
    }
    let header = json!({"inputs": [{"name": "input", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": raw.len()}}]});
    let (body, len) = binary_body(&header, &raw);
    let reply = post_with(
        &server,
        "/v2/models/maas/infer",
        &[("Inference-Header-Content-Length", &len)],
        &body,
    );
    assert_close(&output_data(&reply), &expected);
    let body = json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [base64(b"not an image")]}]});
    let message = server
        .post_json("/v2/models/maas/infer", &body)
        .assert_error(400);
    assert!(message.contains("element 0"), "{message}");
}

#[test]
fn v1_predict_answers_like_predict_json() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 2);
    let server = Server::start(&ws, &[]);
    for (name, bytes) in &imgs {
        let report: Value =
            serde_json::from_str(&ws.ok(&["predict", "--json", "--model", "model.maas", name]))
                .unwrap();
        let expected = &report["predictions"][0];
        let got = server.post(&format!("/v1/predict?name={name}"), bytes);
        assert_eq!(got.status, 200, "{}", got.text());
        let got = got.json();
        assert_eq!(got["file"], expected["file"]);
        assert_eq!(got["label"], expected["label"]);
        assert_eq!(got["index"], expected["index"]);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&got), keys(expected));
        let (a, b) = (
            got["probability"].as_f64().unwrap(),
            expected["probability"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        for (g, e) in got["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .zip(expected["top_k"].as_array().unwrap())
        {
            assert_eq!((&g["label"], &g["index"]), (&e["label"], &e["index"]));
            assert!(
                (g["probability"].as_f64().unwrap() - e["probability"].as_f64().unwrap()).abs()
                    < 1e-5
            );
        }
    }
    let unnamed = server.post("/v1/predict?top_k=5", &imgs[0].1).json();
    assert_eq!(
        (
            unnamed["file"].as_str(),
            unnamed["top_k"].as_array().unwrap().len()
        ),
        (Some("request"), 5)
    );
    assert!(
        server
            .post("/v1/predict", b"GIF89a garbage")
            .assert_error(400)
            .contains("image")
    );
    server.post("/v1/predict", b"").assert_error(400);
    server
        .post("/v1/predict?top_k=11", &imgs[0].1)
        .assert_error(400);
}

#[test]
fn v1_explain_answers_with_the_picture_of_maas_explain_in_json_or_png() {
    // A model of three classes of its own, from an image folder: the server answers with them.
    let ws = Workspace::new(1, 1);
    write_class_folder(&ws.path("photos"), &["cherry", "lime", "sky"], 16, 4);
    ws.ok(&[
        "train",
        "--data",
        "photos",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.005",
        "--quiet",
    ]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    let server = Server::start(&ws, &[]);
    let meta = server.get("/v2/models/maas").json();
    assert_eq!(meta["classes"], json!(["cherry", "lime", "sky"]));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 3]));

    let name = "photos/sky/sky-001.jpg";
    let bytes = std::fs::read(ws.path(name)).unwrap();
    let cli: Value = serde_json::from_str(&ws.ok(&[
        "explain",
        "--json",
        "--model",
        "model.maas",
        "--out",
        "pictures",
        name,
    ]))
    .unwrap();
    let expected = &cli["explanations"][0];
    assert_eq!(expected["label"], "sky");
    let picture = std::fs::read(ws.path(expected["picture"].as_str().unwrap())).unwrap();

    // JSON: the prediction as /v1/predict gives it, and the picture in base64.
    let got = server.post(&format!("/v1/explain?name={name}&top_k=2"), &bytes);
    assert_eq!(got.status, 200, "{}", got.text());
    let got = got.json();
    assert_eq!((&got["file"], &got["label"]), (&json!(name), &json!("sky")));
    assert_eq!(got["index"], expected["index"]);
    assert_eq!(got["top_k"].as_array().unwrap().len(), 2);
    assert_eq!(got["picture_png"].as_str().unwrap(), base64(&picture));

    // Accept: image/png: the picture itself, the prediction in headers.
    let response = agent()
        .post(&server.url("/v1/explain"))
        .header("Accept", "image/png")
        .send(&bytes)
        .unwrap();
    assert_eq!(header(&response, "content-type"), Some("image/png"));
    assert_eq!(header(&response, "x-maas-label"), Some("sky"));
    assert_eq!(header(&response, "x-maas-index"), Some("2"));
    let mut png = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut png)
        .unwrap();
    assert_eq!(png, picture);
    let image = image::load_from_memory(&png).unwrap();
    assert_eq!((image.width(), image.height()), (520, 256));

    assert_eq!(server.post("/v1/predict", &bytes).json()["label"], "sky");
    assert!(
        server
            .post("/v1/explain", b"GIF89a garbage")
            .assert_error(400)
            .contains("image")
    );
    server.post("/v1/explain", b"").assert_error(400);
    assert!(
        server
            .post("/v1/explain?top_k=4", &bytes)
            .assert_error(400)
            .contains("1 to 3")
    );
    assert!(
        server
            .get("/metrics")
            .text()
            .contains(r#"maas_requests_total{route="/v1/explain",status="200"} 2"#)
    );
}

#[test]
fn malformed_requests_get_400_and_the_server_stays_up() {
    let ws = workspace_with_model();
    let server = Server::start(&ws, &[]);
    let one = vec![0.5f32; 3072];
    let cases = [
        (b"this is not json".to_vec(), "malformed"),
        (b"{\"inputs\": [".to_vec(), "malformed"),
        (vec![0xff, 0x00, 0x13], "malformed"),
        (serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 3, 32], "datatype": "FP32", "data": one}]})).unwrap(), "shape"),
        (serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": one}]})).unwrap(), "needs 6144"),
        (serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "INT64", "data": one}]})).unwrap(), "datatype"),
        (serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [[true]]}]})).unwrap(), "malformed"),
        (serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1e300]}]})).unwrap(), "3072"),
    ];
    for (body, expected) in cases {
        let message = server
            .post("/v2/models/maas/infer", &body)
            .assert_error(400);
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    // A value too large for f32 would be infinity: refused, not computed.
    let body = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,3,32,32],"datatype":"FP32","data":[1e300{}]}}]}}"#,
        ",0.5".repeat(3071)
    );
    assert!(
        server
            .post("/v2/models/maas/infer", body.as_bytes())
            .assert_error(400)
            .contains("must be in [0, 1]")
    );
    assert_eq!(
        server
            .post_json("/v2/models/maas/infer", &infer_json(&one, 1))
            .status,
        200
    );
}

#[test]
fn bodies_over_the_limit_get_413() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 1);
    let server = Server::start(&ws, &["--max-body-bytes", "4096"]);
    let values = fp32_tensor(&imgs);
    let message = server
        .post_json("/v2/models/maas/infer", &infer_json(&values, 1))
        .assert_error(413);
    assert!(message.contains("4096"), "{message}");
    // Bodies larger than socket buffers: the client must still be able to send it all and read 413.
    server
        .post("/v1/predict", &vec![7u8; 8 << 20])
        .assert_error(413);
    let chunked = agent()
        .post(&server.url("/v1/predict"))
        .send(ureq::SendBody::from_owned_reader(std::io::Cursor::new(
            vec![7u8; 8 << 20],
        )));
    assert_eq!(
        chunked.as_ref().map(|r| r.status().as_u16()).ok(),
        Some(413),
        "chunked oversize body: {chunked:?}"
    );
    // A small enough body still works.
    assert_eq!(server.post("/v1/predict", &imgs[0].1).status, 200);
}

#[test]
fn api_keys_guard_every_route_but_health_and_metrics() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 1);
    std::fs::write(
        ws.path("keys.txt"),
        "# who may call\n\nkey-for-alice\n  key-for-bob  \n",
    )
    .unwrap();
    let server = Server::start(&ws, &["--api-key-file", "keys.txt"]);
    assert!(!server.stderr().contains("key-for"), "a key was printed");
    for path in ["/v2", "/v2/models/maas", "/v2/models/maas/ready"] {
        assert!(
            server.get(path).assert_error(401).contains("Bearer"),
            "{path}"
        );
        get_with(&server, path, &[("Authorization", "Bearer key-for-eve")]).assert_error(401);
        get_with(&server, path, &[("Authorization", "key-for-alice")]).assert_error(401);
        assert_eq!(
            get_with(&server, path, &[("Authorization", "Bearer key-for-alice")]).status,
            200,
            "{path}"
        );
    }
    server.post("/v1/predict", &imgs[0].1).assert_error(401);
    let bob = [("Authorization", "Bearer key-for-bob")];
    assert_eq!(
        post_with(&server, "/v1/predict", &bob, &imgs[0].1).status,
        200
    );
    let body = serde_json::to_vec(&infer_json(&fp32_tensor(&imgs), 1)).unwrap();
    server
        .post("/v2/models/maas/infer", &body)
        .assert_error(401);
    // Refused before its body is read, a large body must still get its answer, not a reset.
    server
        .post("/v2/models/maas/infer", &vec![b' '; 8 << 20])
        .assert_error(401);
    assert_eq!(
        post_with(&server, "/v2/models/maas/infer", &bob, &body).status,
        200
    );
    for open in ["/v2/health/live", "/v2/health/ready", "/metrics"] {
        assert_eq!(server.get(open).status, 200, "{open}");
    }
    assert!(!server.stderr().contains("key-for"), "a key was printed");
}

#[test]
fn metrics_count_requests_batches_and_load_time() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 2);
    let server = Server::start(&ws, &[]);
    let body = infer_json(&fp32_tensor(&imgs), 2);
    for _ in 0..2 {
        assert_eq!(server.post_json("/v2/models/maas/infer", &body).status, 200);
    }
    server
        .post("/v2/models/maas/infer", b"nope")
        .assert_error(400);
    server.get("/v2/models/other").assert_error(404);
    let reply = server.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(
        reply.content_type.starts_with("text/plain"),
        "{}",
        reply.content_type
    );
    let text = reply.text();
    for line in [
        "maas_requests_total{route=\"/v2/models/{name}/infer\",status=\"200\"} 2",
        "maas_requests_total{route=\"/v2/models/{name}/infer\",status=\"400\"} 1",
        "maas_requests_total{route=\"/v2/models/{name}\",status=\"404\"} 1",
        "maas_request_duration_seconds_count{route=\"/v2/models/{name}/infer\"} 3",
        "maas_batch_size_count 2",
        "maas_batch_size_sum 4",
        "maas_queue_depth 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(text.contains("# TYPE maas_request_duration_seconds histogram"));
    let load: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("maas_model_load_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(load > 0.0 && load < 60.0, "{load}");
}

#[test]
fn a_burst_of_concurrent_clients_all_succeed_in_shared_batches() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 4);
    let names: Vec<String> = imgs.iter().map(|(n, _)| n.clone()).collect();
    let expected = common::predict_probabilities(&ws, "model.maas", &names);
    let server = Server::start(&ws, &["--max-wait-ms", "20"]);
    let url = server.url("/v2/models/maas/infer");
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let url = url.clone();
            let values = fp32_tensor(&imgs[i % 4..i % 4 + 1]);
            std::thread::spawn(move || {
                let body = serde_json::to_vec(&infer_json(&values, 1)).unwrap();
                (i % 4, send(agent().post(&url).send(&body)))
            })
        })
        .collect();
    for client in clients {
        let (which, reply) = client.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_close(&output_data(&reply), &expected[which..=which]);
    }
    let text = server.get("/metrics").text();
    let passes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("maas_batch_size_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        passes < 64.0,
        "64 concurrent requests took {passes} forward passes: no batching"
    );
}

#[test]
fn slow_clients_time_out_and_a_full_server_answers_503() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 1);
    let server = Server::start(&ws, &["--max-queue", "1", "--timeout-ms", "1500"]);
    let addr = server.addr().to_string();
    // A client that announces 1000 bytes and sends 10, holding the only place.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            server.metric("maas_requests_in_progress") >= 1.0
        }),
        "the slow request never started:\n{}",
        server.stderr()
    );
    let busy = server.post("/v1/predict", &imgs[0].1).assert_error(503);
    assert!(busy.contains("busy"), "{busy}");
    // Others are not blocked meanwhile.
    assert_eq!(server.get("/v2/health/ready").status, 200);
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");
    assert_eq!(server.post("/v1/predict", &imgs[0].1).status, 200);
}

/// Sends a request's head and the first half of its body, leaving it in flight.
fn start_slow_request(addr: &str, path: &str, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    stream
}

/// Sends the rest of the body and reads the whole answer (the server closes the connection).
fn finish_slow_request(mut stream: TcpStream, body: &[u8]) -> String {
    stream.write_all(&body[body.len() / 2..]).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let ws = workspace_with_model();
    let imgs = images(&ws, 1);
    let mut server = Server::start(&ws, &["--max-wait-ms", "50"]);
    let addr = server.addr().to_string();
    let png = &imgs[0].1;
    let in_flight: Vec<_> = (0..3)
        .map(|_| start_slow_request(&addr, "/v1/predict", png))
        .collect();
    // The server must have read the heads before the signal for them to count as in flight.
    assert!(
        wait_until(Duration::from_secs(60), || {
            server.metric("maas_requests_in_progress") >= 3.0
        }),
        "the requests never started:\n{}",
        server.stderr()
    );
    server.terminate();
    // New connections are refused while the requests in flight go on.
    let refused = Instant::now();
    while TcpStream::connect(&addr).is_ok() {
        assert!(
            refused.elapsed() < Duration::from_secs(10),
            "still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        server.child.try_wait().unwrap(),
        None,
        "exited with requests in flight"
    );
    for stream in in_flight {
        let answer = finish_slow_request(stream, png);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"label\":"), "{answer}");
    }
    let code = server.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0), "stderr:\n{}", server.stderr());
    assert!(server.stderr().contains("SIGTERM"), "{}", server.stderr());
}

#[test]
fn binding_beyond_loopback_without_a_key_warns() {
    let ws = workspace_with_model();
    // --port 0 on every interface; the test still talks only to 127.0.0.1.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_maas"));
    cmd.current_dir(ws.dir.path())
        .args([
            "--device",
            "cpu",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--model",
            "model.maas",
        ])
        .env_remove("MAAS_API_KEY")
        .env_remove("MAAS_API_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let Some(Ok(line)) = lines.next() else { break };
        let done = line.starts_with("listening on");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = seen.join("\n");
    assert!(
        all.contains("warning") && all.contains("no API key"),
        "{all}"
    );
    assert!(all.contains("listening on http://0.0.0.0:"), "{all}");
}

#[test]
fn missing_key_file_and_bad_model_fail_before_listening() {
    let ws = workspace_with_model();
    let (code, _, err) = ws.run(&[
        "serve",
        "--port",
        "0",
        "--model",
        "model.maas",
        "--api-key-file",
        "absent.txt",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("absent.txt") && !err.contains("listening"),
        "{err}"
    );
    std::fs::write(ws.path("broken.maas"), b"not a model").unwrap();
    let (code, _, err) = ws.run(&["serve", "--port", "0", "--model", "broken.maas"]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn https_serves_a_client_that_trusts_the_certificate_and_no_one_else() {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};

    let ws = workspace_with_model();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .current_dir(ws.dir.path())
        .output()
        .expect("openssl makes the test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = Server::start(&ws, &["--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
    assert!(server.base.starts_with("https://"), "{}", server.base);

    let client = |trusted: bool| {
        // Only this certificate, or none at all: not the usual web roots. rustls with ring, as
        // ureq builds it.
        let mut roots = Vec::new();
        if trusted {
            let pem = std::fs::read(ws.path("cert.pem")).unwrap();
            roots.push(Certificate::from_pem(&pem).unwrap());
        }
        ureq::Agent::config_builder()
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(roots)))
                    .build(),
            )
            .timeout_global(Some(Duration::from_secs(30)))
            .proxy(None)
            .build()
            .new_agent()
    };
    let ready = client(true)
        .get(&server.url("/v2/health/ready"))
        .call()
        .unwrap();
    assert_eq!(ready.status(), 200);
    let png = images(&ws, 1).remove(0).1;
    let reply = client(true)
        .post(&server.url("/v1/predict"))
        .send(&png)
        .unwrap();
    let entry: Value = serde_json::from_reader(reply.into_body().into_reader()).unwrap();
    assert!(entry["label"].is_string(), "{entry}");
    assert!(
        client(false)
            .get(&server.url("/v2/health/ready"))
            .call()
            .is_err(),
        "an untrusted certificate was accepted"
    );
    let plain = server
        .url("/v2/health/ready")
        .replacen("https://", "http://", 1);
    assert!(
        agent().get(&plain).call().is_err(),
        "plain HTTP was answered on the TLS port"
    );
}

#[test]
fn a_two_class_model_answers_v1_predict_without_top_k() {
    // The default top_k of 3 asks for no more classes than the model has.
    let ws = Workspace::new(1, 1);
    write_class_folder(&ws.path("photos"), &["cherry", "sky"], 8, 2);
    ws.ok(&["train", "--data", "photos", "--epochs", "1", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    let server = Server::start(&ws, &[]);
    let bytes = std::fs::read(ws.path("photos/sky/sky-001.jpg")).unwrap();
    for route in ["/v1/predict", "/v1/explain"] {
        let got = server.post(route, &bytes);
        assert_eq!(got.status, 200, "{route}: {}", got.text());
        assert_eq!(got.json()["top_k"].as_array().unwrap().len(), 2, "{route}");
    }
    server.post("/v1/predict?top_k=3", &bytes).assert_error(400);
}
