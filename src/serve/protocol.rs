//! The infer request and response of the Open Inference Protocol (KServe v2), in JSON and with
//! the binary tensor data extension that the Triton and KServe clients use by default.
//!
//! With the extension, the `Inference-Header-Content-Length: L` header says that the body is L
//! bytes of JSON followed by the raw bytes of every input whose `parameters.binary_data_size` is
//! set, in the order of `inputs`. Outputs asked for in binary come back the same way.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::decode::Decoding;
use super::error::ApiError;
use super::tensor_data::FlatData;
use crate::data::preprocess::{INPUT_LEN, SIDE};

/// The model's one input.
pub const INPUT_NAME: &str = "input";
/// The model's one output.
pub const OUTPUT_NAME: &str = "probabilities";
/// The header of the binary tensor data extension.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Most images in one request: an encoded image of a few bytes becomes 3072 floats, so without a
/// cap a small body could claim gigabytes.
pub const MAX_IMAGES: usize = 4096;

#[derive(Debug, Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Debug, Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<FlatData>,
}

#[derive(Debug, Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// The input as sent: preprocessed values, or encoded images still to decode.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `rows` images of [`INPUT_LEN`] values.
    Fp32 { rows: usize, values: Vec<f32> },
    /// Encoded image files.
    Images(Vec<Vec<u8>>),
}

/// A checked infer request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The client's request id, echoed back.
    pub id: Option<String>,
    /// The input tensor.
    pub input: Input,
    /// Whether the probabilities go back as raw bytes.
    pub binary_output: bool,
}

impl Input {
    /// Model input values and how many images they hold; encoded images are decoded here,
    /// one after the other within the bounds of `decoding`, with the one preprocessing of
    /// training and `predict`.
    pub fn into_values(self, decoding: &mut Decoding) -> Result<(Vec<f32>, usize), ApiError> {
        match self {
            Input::Fp32 { rows, values } => Ok((values, rows)),
            Input::Images(images) => {
                let mut values = Vec::with_capacity(images.len() * INPUT_LEN);
                for (i, bytes) in images.iter().enumerate() {
                    decoding.image(bytes, &mut values).map_err(|e| {
                        ApiError::new(
                            e.status,
                            format!("input '{INPUT_NAME}' element {i}: {}", e.message),
                        )
                    })?;
                }
                Ok((values, images.len()))
            }
        }
    }
}

/// The length of the JSON part when the request uses the binary extension.
pub fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("Inference-Header-Content-Length is not a byte count"))
}

/// Parses and checks an infer request body.
pub fn parse(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, ApiError> {
    let (json, mut binary) = match header_length {
        None => (body, None),
        Some(len) if len > body.len() => {
            return Err(ApiError::bad_request(format!(
                "Inference-Header-Content-Length is {len} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(len) => (&body[..len], Some(&body[len..])),
    };
    let request: RequestJson = serde_json::from_slice(json)
        .map_err(|e| ApiError::bad_request(format!("malformed infer request: {e}")))?;
    let binary_output = binary_output(&request)?;
    let [input] = <[InputJson; 1]>::try_from(request.inputs).map_err(|inputs| {
        ApiError::bad_request(format!(
            "expected exactly one input ('{INPUT_NAME}'), got {}",
            inputs.len()
        ))
    })?;
    let input = parse_input(input, &mut binary)?;
    if let Some(rest) = binary.filter(|rest| !rest.is_empty()) {
        return Err(ApiError::bad_request(format!(
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
) -> Result<Option<bool>, ApiError> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::bad_request(format!(
            "parameter {key} must be true or false, not {other}"
        ))),
    }
}

/// Whether the client asked for the probabilities in binary: per output, else for all outputs.
fn binary_output(request: &RequestJson) -> Result<bool, ApiError> {
    let all = bool_parameter(request.parameters.as_ref(), "binary_data_output")?.unwrap_or(false);
    let mut binary = all;
    for output in request.outputs.iter().flatten() {
        if output.name != OUTPUT_NAME {
            return Err(ApiError::bad_request(format!(
                "unknown output '{}'; this model's output is '{OUTPUT_NAME}'",
                output.name
            )));
        }
        let parameters = output.parameters.as_ref();
        if parameters.is_some_and(|p| p.contains_key("classification")) {
            return Err(ApiError::bad_request(
                "the classification extension is not supported; read the probabilities",
            ));
        }
        if parameters.is_some_and(|p| p.contains_key("shared_memory_region")) {
            return Err(ApiError::bad_request("shared memory is not supported"));
        }
        binary = bool_parameter(parameters, "binary_data")?.unwrap_or(all);
    }
    Ok(binary)
}

fn parse_input(input: InputJson, binary: &mut Option<&[u8]>) -> Result<Input, ApiError> {
    let parameters = input.parameters.as_ref();
    if parameters.is_some_and(|p| p.contains_key("shared_memory_region")) {
        return Err(ApiError::bad_request("shared memory is not supported"));
    }
    let raw = take_binary(parameters, binary)?;
    let data = match (raw, input.data) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(format!(
                "input '{INPUT_NAME}' has both data and binary_data_size"
            )));
        }
        (Some(raw), None) => Some(TensorData::Raw(raw)),
        (None, Some(json)) => Some(TensorData::Json(json)),
        (None, None) => None,
    };
    check_input(&input.name, &input.datatype, &input.shape, data)
}

/// An input tensor's contents, as a REST or gRPC request carries them.
pub enum TensorData<'a> {
    /// Raw bytes: the binary extension's part, or gRPC's `raw_input_contents`; FP32 as
    /// little-endian floats, BYTES as elements each preceded by its 4-byte little-endian length.
    Raw(&'a [u8]),
    /// JSON `data`: numbers, or base64 strings for BYTES.
    Json(FlatData),
    /// gRPC's typed `fp32_contents`.
    Fp32(Vec<f32>),
    /// gRPC's typed `bytes_contents`: each element one encoded image.
    Bytes(Vec<Vec<u8>>),
}

/// Checks an input tensor (its name, datatype, shape and contents) whatever the transport: the
/// same rules and messages for REST and gRPC.
pub fn check_input(
    name: &str,
    datatype: &str,
    shape: &[i64],
    data: Option<TensorData>,
) -> Result<Input, ApiError> {
    if name != INPUT_NAME {
        return Err(ApiError::bad_request(format!(
            "unknown input '{name}'; this model's input is '{INPUT_NAME}'"
        )));
    }
    let Some(data) = data else {
        return Err(missing_data());
    };
    match datatype {
        "FP32" => {
            let rows = fp32_rows(shape)?;
            let values = match data {
                TensorData::Raw(raw) => fp32_from_bytes(raw, rows)?,
                TensorData::Json(json) => fp32_from_json(json, rows)?,
                TensorData::Fp32(values) => fp32_from_json(
                    FlatData {
                        numbers: values,
                        strings: Vec::new(),
                    },
                    rows,
                )?,
                TensorData::Bytes(_) => {
                    return Err(ApiError::bad_request(format!(
                        "FP32 input '{INPUT_NAME}' holds bytes; send numbers"
                    )));
                }
            };
            // The model only ever saw pixel bytes / 255: anything else (NaN, 1e30, a client's own
            // mean/std normalisation) would get a confident but meaningless answer.
            if let Some(at) = values.iter().position(|v| !(0.0..=1.0).contains(v)) {
                return Err(ApiError::bad_request(format!(
                    "input '{INPUT_NAME}' element {at} is {:?}; values must be in [0, 1] \
                     (pixel bytes / 255, channel-major RGB)",
                    values[at]
                )));
            }
            Ok(Input::Fp32 { rows, values })
        }
        "BYTES" => {
            let count = bytes_count(shape)?;
            let images = match data {
                TensorData::Raw(raw) => bytes_from_binary(raw, count)?,
                TensorData::Json(json) => bytes_from_json(json, count)?,
                TensorData::Bytes(images) if images.len() == count => images,
                TensorData::Bytes(images) => return Err(bytes_mismatch(images.len(), count)),
                TensorData::Fp32(_) => {
                    return Err(ApiError::bad_request(format!(
                        "BYTES input '{INPUT_NAME}' holds numbers; send encoded images"
                    )));
                }
            };
            Ok(Input::Images(images))
        }
        other => Err(ApiError::bad_request(format!(
            "input '{INPUT_NAME}' has datatype {other}; expected FP32 (shape [N,3,{SIDE},{SIDE}], values in [0, 1]) \
             or BYTES (encoded image files, shape [N])"
        ))),
    }
}

fn bytes_mismatch(got: usize, count: usize) -> ApiError {
    ApiError::bad_request(format!(
        "BYTES input '{INPUT_NAME}' has {got} elements but its shape says {count}"
    ))
}

fn missing_data() -> ApiError {
    ApiError::bad_request(format!(
        "input '{INPUT_NAME}' has neither data nor parameters.binary_data_size"
    ))
}

/// The input's bytes from the binary part, when its header says it has some.
fn take_binary<'a>(
    parameters: Option<&Map<String, Value>>,
    binary: &mut Option<&'a [u8]>,
) -> Result<Option<&'a [u8]>, ApiError> {
    let Some(size) = parameters.and_then(|p| p.get("binary_data_size")) else {
        return Ok(None);
    };
    let size = size
        .as_u64()
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| ApiError::bad_request("binary_data_size must be a byte count"))?;
    let Some(rest) = binary.as_mut() else {
        return Err(ApiError::bad_request(
            "binary_data_size is set but the request has no Inference-Header-Content-Length header",
        ));
    };
    if size > rest.len() {
        return Err(ApiError::bad_request(format!(
            "binary_data_size is {size} but only {} bytes of binary data follow the header",
            rest.len()
        )));
    }
    let current: &'a [u8] = rest;
    let (mine, after) = current.split_at(size);
    *rest = after;
    Ok(Some(mine))
}

fn shape_text(shape: &[i64]) -> String {
    format!("{shape:?}").replace(' ', "")
}

fn check_rows(rows: i64, shape: &[i64]) -> Result<usize, ApiError> {
    match usize::try_from(rows) {
        Ok(n) if (1..=MAX_IMAGES).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "input '{INPUT_NAME}' has shape {}: the batch size must be 1 to {MAX_IMAGES}",
            shape_text(shape)
        ))),
    }
}

fn fp32_rows(shape: &[i64]) -> Result<usize, ApiError> {
    let side = i64::from(SIDE);
    match shape {
        [n, 3, h, w] if *h == side && *w == side => check_rows(*n, shape),
        _ => Err(ApiError::bad_request(format!(
            "input '{INPUT_NAME}' has shape {}; expected [N,3,{SIDE},{SIDE}]",
            shape_text(shape)
        ))),
    }
}

fn bytes_count(shape: &[i64]) -> Result<usize, ApiError> {
    match shape {
        [n] | [n, 1] => check_rows(*n, shape),
        _ => Err(ApiError::bad_request(format!(
            "BYTES input '{INPUT_NAME}' has shape {}; expected [N] (one encoded image per element)",
            shape_text(shape)
        ))),
    }
}

fn count_mismatch(what: &str, got: usize, rows: usize, expected: usize) -> ApiError {
    ApiError::bad_request(format!(
        "input '{INPUT_NAME}' has {got} {what} but its shape [{rows},3,{SIDE},{SIDE}] needs {expected}"
    ))
}

fn fp32_from_bytes(raw: &[u8], rows: usize) -> Result<Vec<f32>, ApiError> {
    let expected = rows * INPUT_LEN * 4;
    if raw.len() != expected {
        return Err(count_mismatch(
            "bytes of FP32 data",
            raw.len(),
            rows,
            expected,
        ));
    }
    // The extension sends tensors in little-endian byte order, whatever the machines.
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn fp32_from_json(data: FlatData, rows: usize) -> Result<Vec<f32>, ApiError> {
    if !data.strings.is_empty() {
        return Err(ApiError::bad_request(format!(
            "FP32 input '{INPUT_NAME}' holds strings; send numbers"
        )));
    }
    if data.numbers.len() != rows * INPUT_LEN {
        return Err(count_mismatch(
            "values",
            data.numbers.len(),
            rows,
            rows * INPUT_LEN,
        ));
    }
    Ok(data.numbers)
}

fn bytes_from_binary(mut raw: &[u8], count: usize) -> Result<Vec<Vec<u8>>, ApiError> {
    // Each element: its length as 4 little-endian bytes, then the bytes.
    let mut images = Vec::with_capacity(count);
    while !raw.is_empty() {
        let Some((len, rest)) = raw.split_first_chunk::<4>() else {
            return Err(ApiError::bad_request(
                "BYTES data is cut inside an element's 4-byte length",
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(ApiError::bad_request(format!(
                "BYTES element {} claims {len} bytes but only {} remain",
                images.len(),
                rest.len()
            )));
        }
        let (element, after) = rest.split_at(len);
        images.push(element.to_vec());
        raw = after;
        if images.len() > count {
            break;
        }
    }
    if images.len() != count {
        return Err(bytes_mismatch(images.len(), count));
    }
    Ok(images)
}

fn bytes_from_json(data: FlatData, count: usize) -> Result<Vec<Vec<u8>>, ApiError> {
    if !data.numbers.is_empty() {
        return Err(ApiError::bad_request(format!(
            "BYTES input '{INPUT_NAME}' holds numbers; send base64 strings of encoded images"
        )));
    }
    if data.strings.len() != count {
        return Err(bytes_mismatch(data.strings.len(), count));
    }
    data.strings
        .iter()
        .enumerate()
        .map(|(i, text)| {
            decode_base64(&text.0).map_err(|e| {
                ApiError::bad_request(format!(
                    "BYTES element {i}: base64: {e} (send images base64-encoded)"
                ))
            })
        })
        .collect()
}

/// Standard base64 (RFC 4648), the alphabet the protocol's JSON BYTES use, with or without
/// padding and with any final bits.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes a BYTES element sent as a JSON string. Clients differ, so the URL-safe alphabet and
/// line breaks (MIME wraps at 76) are accepted too: text that fails as it is is decoded again
/// with those mapped to the standard alphabet.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    BASE64.decode(text).or_else(|error| {
        let lenient = text
            .bytes()
            .any(|b| matches!(b, b'-' | b'_') || b.is_ascii_whitespace());
        if !lenient {
            return Err(error);
        }
        let standard: Vec<u8> = text
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| match b {
                b'-' => b'+',
                b'_' => b'/',
                b => b,
            })
            .collect();
        BASE64.decode(standard)
    })
}

/// Encodes `bytes` in standard base64, padded, as the protocol's JSON BYTES and
/// `/v1/explain`'s `picture_png` carry them.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: [OutputTensor<'a>; 1],
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a [f32]>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// The infer response: JSON, or a JSON header followed by the raw probabilities.
pub fn response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    binary: bool,
    probabilities: &[f32],
    classes: usize,
) -> Result<Response, ApiError> {
    let rows = probabilities.len() / classes.max(1);
    let raw_size = probabilities.len() * 4;
    let output = OutputTensor {
        name: OUTPUT_NAME,
        datatype: "FP32",
        shape: [rows, classes],
        parameters: binary.then_some(BinaryParameters {
            binary_data_size: raw_size,
        }),
        data: (!binary).then_some(probabilities),
    };
    let head = ResponseJson {
        model_name,
        model_version,
        id,
        outputs: [output],
    };
    let mut body = serde_json::to_vec(&head)
        .map_err(|e| ApiError::internal(format!("cannot encode the response: {e}")))?;
    if !binary {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
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
                HeaderValue::from_static("application/octet-stream"),
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

    fn status(result: Result<InferRequest, ApiError>) -> (u16, String) {
        let e = result.unwrap_err();
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
    fn base64_rfc4648_vectors_both_alphabets_and_line_breaks() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                decode_base64(encoded).unwrap(),
                plain.as_bytes(),
                "{encoded}"
            );
            assert_eq!(encode_base64(plain.as_bytes()), encoded);
            let unpadded = encoded.trim_end_matches('=');
            assert_eq!(
                decode_base64(unpadded).unwrap(),
                plain.as_bytes(),
                "{unpadded}"
            );
        }
        // 0xfb 0xff 0xbf encodes to "+/+/" (standard) or "-_-_" (URL-safe).
        assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(decode_base64("-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(decode_base64("Zm9v\r\nYmFy\n").unwrap(), b"foobar");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_base64(&encode_base64(&all)).unwrap(), all);
        for bad in [
            "Zg=a", "Z", "Zm9vY", "Zm9v!", "Zg===", "Z===", "é", "Zm 9v!",
        ] {
            assert!(decode_base64(bad).is_err(), "{bad:?} decoded");
        }
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
        let r = response("maas", "1", Some("7"), false, &probs, 10).unwrap();
        assert!(r.headers().get(HEADER_LENGTH).is_none());
        let v: Value =
            serde_json::from_slice(&to_bytes(r.into_body(), usize::MAX).await.unwrap()).unwrap();
        assert_eq!(v["id"], "7");
        assert_eq!(v["model_version"], "1");
        assert_eq!(v["outputs"][0]["shape"], json!([2, 10]));
        assert_eq!(v["outputs"][0]["data"][3].as_f64().unwrap() as f32, 0.03);

        let r = response("maas", "1", None, true, &probs, 10).unwrap();
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
