//! The infer request and response of the Open Inference Protocol (KServe v2) over REST: JSON,
//! and the binary tensor data extension that the Triton and KServe clients use by default. This
//! is the REST wire format alone: the body is read into the neutral request of
//! [`crate::protocol`], checked there, and the neutral answer written back.
//!
//! With the extension, the `Inference-Header-Content-Length: L` header says that the body is L
//! bytes of JSON followed by the raw bytes of every input whose `parameters.binary_data_size` is
//! set, in the order of `inputs`. Outputs asked for in binary come back the same way.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::protocol::checks::{
    RequestedOutput, check_input, check_name, check_outputs, no_data, one_input, shared_memory,
    two_sources,
};
use crate::protocol::names::{
    BINARY_CONTENT, BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, CLASSIFICATION, FP32,
    HEADER_LENGTH, JSON_CONTENT, OUTPUT_NAME, SHARED_MEMORY_REGION,
};
use crate::protocol::rest::{InferRequestJson, InferResponseJson, TensorJson, parameter};
use crate::protocol::tensor_data::FlatData;
use crate::protocol::{InferRequest, InferResponse, Input, Invalid, TensorData};

type RequestJson = InferRequestJson<FlatData>;
type InputJson = TensorJson<FlatData>;

/// The length of the JSON part when the request uses the binary extension.
pub fn header_length(headers: &HeaderMap) -> Result<Option<usize>, Invalid> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| Invalid::new("Inference-Header-Content-Length is not a byte count"))
}

/// Parses and checks an infer request body.
pub fn parse(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, Invalid> {
    let (json, mut binary) = match header_length {
        None => (body, None),
        Some(len) if len > body.len() => {
            return Err(Invalid::new(format!(
                "Inference-Header-Content-Length is {len} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(len) => (&body[..len], Some(&body[len..])),
    };
    let request: RequestJson = serde_json::from_slice(json)
        .map_err(|e| Invalid::new(format!("malformed infer request: {e}")))?;
    let binary_output = binary_output(&request)?;
    let input = parse_input(one_input(request.inputs)?, &mut binary)?;
    if let Some(rest) = binary.filter(|rest| !rest.is_empty()) {
        return Err(Invalid::new(format!(
            "the body has {} bytes after the binary tensor data the header describes",
            rest.len()
        )));
    }
    Ok(InferRequest {
        id: request.id,
        input,
        binary_output,
    })
}

fn bool_parameter(
    parameters: Option<&Map<String, Value>>,
    key: &str,
) -> Result<Option<bool>, Invalid> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Invalid::new(format!(
            "parameter {key} must be true or false, not {other}"
        ))),
    }
}

/// Whether the client asked for the probabilities in binary: per output, else for all outputs.
fn binary_output(request: &RequestJson) -> Result<bool, Invalid> {
    let all = bool_parameter(request.parameters.as_ref(), BINARY_DATA_OUTPUT)?.unwrap_or(false);
    let mut outputs = Vec::new();
    for output in request.outputs.iter().flatten() {
        let parameters = output.parameters.as_ref();
        let has = |key: &str| parameters.is_some_and(|p| p.contains_key(key));
        outputs.push(RequestedOutput {
            name: &output.name,
            binary: bool_parameter(parameters, BINARY_DATA)?,
            classification: has(CLASSIFICATION),
            shared_memory: has(SHARED_MEMORY_REGION),
        });
    }
    check_outputs(outputs, all)
}

fn parse_input(input: InputJson, binary: &mut Option<&[u8]>) -> Result<Input, Invalid> {
    let parameters = input.parameters.as_ref();
    if parameters.is_some_and(|p| p.contains_key(SHARED_MEMORY_REGION)) {
        return Err(shared_memory());
    }
    let raw = take_binary(parameters, binary)?;
    let data = match (raw, input.data) {
        (Some(_), Some(_)) => return Err(two_sources("data and binary_data_size")),
        (Some(raw), None) => TensorData::Raw(raw),
        (None, Some(json)) => TensorData::Json(json),
        (None, None) => {
            check_name(&input.name)?;
            return Err(no_data("data nor parameters.binary_data_size"));
        }
    };
    check_input(&input.name, &input.datatype, &input.shape, data)
}

/// The input's bytes from the binary part, when its header says it has some.
fn take_binary<'a>(
    parameters: Option<&Map<String, Value>>,
    binary: &mut Option<&'a [u8]>,
) -> Result<Option<&'a [u8]>, Invalid> {
    let Some(size) = parameters.and_then(|p| p.get(BINARY_DATA_SIZE)) else {
        return Ok(None);
    };
    let size = size
        .as_u64()
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| Invalid::new("binary_data_size must be a byte count"))?;
    let Some(rest) = binary.as_mut() else {
        return Err(Invalid::new(
            "binary_data_size is set but the request has no Inference-Header-Content-Length header",
        ));
    };
    if size > rest.len() {
        return Err(Invalid::new(format!(
            "binary_data_size is {size} but only {} bytes of binary data follow the header",
            rest.len()
        )));
    }
    let current: &'a [u8] = rest;
    let (mine, after) = current.split_at(size);
    *rest = after;
    Ok(Some(mine))
}

/// The infer response: JSON, or a JSON header followed by the raw probabilities when the request
/// asked for binary.
pub fn response(answer: &InferResponse) -> Result<Response, ApiError> {
    let binary = answer.binary_output;
    let probabilities = answer.probabilities.as_slice();
    let raw_size = probabilities.len() * 4;
    let output = TensorJson {
        name: OUTPUT_NAME.to_string(),
        datatype: FP32.to_string(),
        shape: answer.dims(),
        parameters: binary.then(|| parameter(BINARY_DATA_SIZE, raw_size)),
        data: (!binary).then_some(probabilities),
    };
    let head = InferResponseJson {
        model_name: Some(answer.model_name.clone()),
        model_version: Some(answer.model_version.clone()),
        id: answer.id.clone(),
        outputs: vec![output],
    };
    let mut body = serde_json::to_vec(&head)
        .map_err(|e| ApiError::internal(format!("cannot encode the response: {e}")))?;
    if !binary {
        return Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT))],
            body,
        )
            .into_response());
    }
    let json_len = body.len();
    body.reserve(raw_size);
    for p in probabilities {
        body.extend_from_slice(&p.to_le_bytes());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(BINARY_CONTENT),
            ),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                HeaderValue::from(json_len),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::preprocess::INPUT_LEN;
    use serde_json::json;

    fn values(rows: usize) -> Vec<f32> {
        (0..rows * INPUT_LEN)
            .map(|i| (i % 256) as f32 / 255.0)
            .collect()
    }

    /// A body as `tritonclient.http` builds it: JSON header, then the raw tensor bytes.
    fn binary_body(header: &Value, raw: &[u8]) -> (Vec<u8>, usize) {
        let mut body = serde_json::to_vec(header).unwrap();
        let len = body.len();
        body.extend_from_slice(raw);
        (body, len)
    }

    fn status(result: Result<InferRequest, Invalid>) -> (u16, String) {
        let e = ApiError::from(result.unwrap_err());
        (e.status.as_u16(), e.message)
    }

    #[test]
    fn json_fp32_flat_or_nested_with_id() {
        let v = values(2);
        let body = json!({"id": "r1", "inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": v}]});
        let req = parse(&serde_json::to_vec(&body).unwrap(), None).unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert!(!req.binary_output);
        assert_eq!(
            req.input,
            Input::Fp32 {
                rows: 2,
                values: v.clone()
            }
        );
        let nested: Vec<Vec<f32>> = v.chunks(32).map(|c| c.to_vec()).collect();
        let body = json!({"inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": nested}]});
        assert_eq!(
            parse(&serde_json::to_vec(&body).unwrap(), None)
                .unwrap()
                .input,
            Input::Fp32 { rows: 2, values: v }
        );
    }

    #[test]
    fn binary_fp32_as_triton_sends_it() {
        let v = values(3);
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let header = json!({
            "inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
            "parameters": {"binary_data_output": true}
        });
        let (body, len) = binary_body(&header, &raw);
        let req = parse(&body, Some(len)).unwrap();
        assert!(req.binary_output);
        assert_eq!(req.input, Input::Fp32 { rows: 3, values: v });
        // A per-output flag overrides the request-wide one.
        let mut header = header;
        header["outputs"] =
            json!([{"name": "probabilities", "parameters": {"binary_data": false}}]);
        let (body, len) = binary_body(&header, &raw);
        assert!(!parse(&body, Some(len)).unwrap().binary_output);
        // Extra bytes after the tensors, or too few, are errors.
        let (mut body, len) = binary_body(&header, &raw);
        body.push(0);
        assert_eq!(status(parse(&body, Some(len))).0, 400);
        let (body, len) = binary_body(&header, &raw[..raw.len() - 4]);
        assert_eq!(status(parse(&body, Some(len))).0, 400);
        assert_eq!(status(parse(&body, Some(body.len() + 1))).0, 400);
    }

    #[test]
    fn bytes_in_json_and_binary() {
        let body = json!({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": ["Zm9v", {"b64": "YmFy"}]}]});
        let req = parse(&serde_json::to_vec(&body).unwrap(), None).unwrap();
        assert_eq!(
            req.input,
            Input::Images(vec![b"foo".to_vec(), b"bar".to_vec()])
        );
        let mut raw = Vec::new();
        for element in [&b"abc"[..], b"", b"de"] {
            raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
            raw.extend_from_slice(element);
        }
        let header = json!({"inputs": [{"name": "input", "shape": [3, 1], "datatype": "BYTES", "parameters": {"binary_data_size": raw.len()}}]});
        let (body, len) = binary_body(&header, &raw);
        assert_eq!(
            parse(&body, Some(len)).unwrap().input,
            Input::Images(vec![b"abc".to_vec(), vec![], b"de".to_vec()])
        );
        let header = json!({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": raw.len()}}]});
        let (body, len) = binary_body(&header, &raw);
        assert!(status(parse(&body, Some(len))).1.contains("3 elements"));
        let (body, len) = binary_body(&header, &raw[..5]);
        assert_eq!(status(parse(&body, Some(len))).0, 400);
    }

    #[test]
    fn wrong_requests_are_400_with_a_reason() {
        let ok = |shape: Value, datatype: &str, data: Value| json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]});
        let cases = [
            (
                ok(json!([1, 3, 32, 32]), "FP32", json!(values(1)[..10])),
                "needs 3072",
            ),
            (
                ok(json!([1, 3, 32, 31]), "FP32", json!(values(1))),
                "expected [N,3,32,32]",
            ),
            (ok(json!([0, 3, 32, 32]), "FP32", json!([])), "batch size"),
            (ok(json!([-1, 3, 32, 32]), "FP32", json!([])), "batch size"),
            (
                ok(json!([1, 3, 32, 32]), "INT8", json!(values(1))),
                "datatype INT8",
            ),
            (ok(json!([1, 3, 32, 32]), "FP32", json!(["a"])), "strings"),
            (ok(json!([1]), "BYTES", json!(["!!"])), "base64"),
            (ok(json!([1]), "BYTES", json!([1])), "numbers"),
            (json!({"inputs": []}), "exactly one input"),
            (
                json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["Zm9v"]}]}),
                "unknown input",
            ),
            (
                json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES"}]}),
                "neither data",
            ),
            (
                json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 3}}]}),
                "no Inference-Header",
            ),
            (
                json!({"inputs": [], "outputs": [{"name": "logits"}]}),
                "unknown output",
            ),
            (
                json!({"inputs": [], "parameters": {"binary_data_output": "yes"}}),
                "true or false",
            ),
            (json!({"input": []}), "missing field `inputs`"),
        ];
        for (body, expected) in cases {
            let (code, message) = status(parse(&serde_json::to_vec(&body).unwrap(), None));
            assert_eq!(code, 400, "{body}");
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
        for garbage in [&b""[..], b"\x00\x01", b"{", b"[1,2]", b"null"] {
            assert_eq!(status(parse(garbage, None)).0, 400);
        }
    }

    #[test]
    fn values_outside_the_unit_interval_are_refused_in_binary() {
        for bad in [f32::NAN, f32::INFINITY, 1e30, -0.001, 1.0001] {
            let mut v = values(1);
            v[5] = bad;
            let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let header = json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}]});
            let (body, len) = binary_body(&header, &raw);
            let message = status(parse(&body, Some(len))).1;
            assert!(
                message.contains("element 5") && message.contains("[0, 1]"),
                "{message}"
            );
        }
        // The bounds themselves are pixel values.
        let mut v = values(1);
        v[0] = 0.0;
        v[1] = 1.0;
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let header = json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}]});
        let (body, len) = binary_body(&header, &raw);
        assert!(parse(&body, Some(len)).is_ok());
    }

    #[tokio::test]
    async fn responses_in_json_and_binary() {
        use axum::body::to_bytes;
        let probs: Vec<f32> = (0..20).map(|i| i as f32 / 100.0).collect();
        let answer = |id: Option<&str>, binary_output| InferResponse {
            model_name: "maas".into(),
            model_version: "1".into(),
            id: id.map(str::to_string),
            binary_output,
            probabilities: probs.clone(),
            classes: 10,
        };
        let r = response(&answer(Some("7"), false)).unwrap();
        assert!(r.headers().get(HEADER_LENGTH).is_none());
        let v: Value =
            serde_json::from_slice(&to_bytes(r.into_body(), usize::MAX).await.unwrap()).unwrap();
        assert_eq!(v["id"], "7");
        assert_eq!(v["model_version"], "1");
        assert_eq!(v["outputs"][0]["shape"], json!([2, 10]));
        assert_eq!(v["outputs"][0]["data"][3].as_f64().unwrap() as f32, 0.03);

        let r = response(&answer(None, true)).unwrap();
        let len: usize = r.headers()[HEADER_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/octet-stream"
        );
        let body = to_bytes(r.into_body(), usize::MAX).await.unwrap();
        let head: Value = serde_json::from_slice(&body[..len]).unwrap();
        assert!(head.get("id").is_none());
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 80);
        assert!(head["outputs"][0].get("data").is_none());
        let raw: Vec<f32> = body[len..]
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(raw, probs);
    }
}
