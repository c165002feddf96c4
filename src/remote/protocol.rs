//! The Open Inference Protocol (KServe v2 REST) as a client writes and reads it: metadata, and
//! infer requests of FP32 `[N,3,32,32]` in JSON or with the binary tensor data extension. The
//! names, the metadata messages and the reader of JSON tensor data are the server's own
//! ([`crate::protocol`]).

use anyhow::Result;
use serde::{Deserialize, Serialize, Serializer};

use super::client::Answer;
use crate::data::preprocess::{INPUT_LEN, SIDE};
pub use crate::protocol::metadata::{
    IndexEntry, MAX_CLASSES, ModelMetadata, ServerMetadata, TensorMetadata,
};
use crate::protocol::metadata::{class_count, dim};
use crate::protocol::names::{
    BINARY_CONTENT, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, FP32, HEADER_LENGTH, JSON_CONTENT,
};
use crate::protocol::rest::{InferRequestJson, InferResponseJson, TensorJson, parameter};
use crate::protocol::tensor_data::FlatData;

/// KServe's `GET /v2/models`.
#[derive(Debug, Deserialize)]
pub struct ModelList {
    /// The names of the models served.
    pub models: Vec<String>,
}

/// An infer request's body: its content type, its extra headers and its bytes.
pub struct InferBody {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Inference-Header-Content-Length` when binary.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub bytes: Vec<u8>,
}

/// f32 values written as the f64 numbers they equal (`0.003921568859368563`, not `0.003921569`),
/// as Python clients write them (tritonclient's `tolist()`): `bench --protocol v2-json` sends
/// the server the JSON it usually gets. The server reads back the same f32 either way.
struct AsF64<'a>(&'a [f32]);

impl Serialize for AsF64<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|&v| f64::from(v)))
    }
}

/// The infer request for `inputs` (rows of [`INPUT_LEN`] values) under the input name `input`:
/// a JSON header and the raw little-endian floats when `binary`, else JSON tensors.
pub fn infer_request(input: &str, inputs: &[f32], binary: bool) -> Result<InferBody> {
    let side = i64::from(SIDE);
    let tensor = TensorJson {
        name: input.to_string(),
        datatype: FP32.to_string(),
        shape: vec![dim(inputs.len() / INPUT_LEN), 3, side, side],
        parameters: binary.then(|| parameter(BINARY_DATA_SIZE, inputs.len() * 4)),
        data: (!binary).then_some(AsF64(inputs)),
    };
    let head = InferRequestJson {
        id: None,
        parameters: binary.then(|| parameter(BINARY_DATA_OUTPUT, true)),
        inputs: vec![tensor],
        outputs: None,
    };
    if !binary {
        return Ok(InferBody {
            content_type: JSON_CONTENT,
            headers: Vec::new(),
            bytes: serde_json::to_vec(&head)?,
        });
    }
    let mut bytes = serde_json::to_vec(&head)?;
    let json_len = bytes.len();
    bytes.reserve(inputs.len() * 4);
    for v in inputs {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    Ok(InferBody {
        content_type: BINARY_CONTENT,
        headers: vec![(HEADER_LENGTH, json_len.to_string())],
        bytes,
    })
}

/// The probabilities of an infer answer for `rows` inputs: the output named `output` (else the
/// first), FP32 `[rows, C]`, every value finite. Gives the values and C.
pub fn infer_response(answer: &Answer, output: &str, rows: usize) -> Result<(Vec<f32>, usize)> {
    let (head, mut raw) = match answer.header_length {
        Some(len) if len <= answer.body.len() => answer.body.split_at(len),
        Some(len) => {
            return Err(answer.not_protocol(format!(
                "a {len}-byte JSON header in a {}-byte body",
                answer.body.len()
            )));
        }
        None => (answer.body.as_slice(), &[][..]),
    };
    let response: InferResponseJson<FlatData> =
        serde_json::from_slice(head).map_err(|e| answer.not_protocol(e))?;
    // Binary outputs come in the order of `outputs`: skip the bytes of those before ours.
    let mut chosen = None;
    for (i, o) in response.outputs.iter().enumerate() {
        let size = o
            .parameters
            .as_ref()
            .and_then(|p| p.get(BINARY_DATA_SIZE))
            .and_then(serde_json::Value::as_u64)
            .map(|n| n as usize);
        if o.name == output || (chosen.is_none() && i + 1 == response.outputs.len()) {
            chosen = Some((o, size));
            if o.name == output {
                break;
            }
        } else if let Some(size) = size {
            raw = raw.get(size..).unwrap_or_default();
        }
    }
    let Some((o, size)) = chosen else {
        return Err(answer.not_protocol("no outputs"));
    };
    if o.datatype != FP32 {
        return Err(answer.not_protocol(format!(
            "output '{}' is {}, expected FP32",
            o.name, o.datatype
        )));
    }
    let classes = match o.shape.as_slice() {
        [r, _] if *r == rows as i64 => class_count(&o.name, &o.shape),
        _ => Err(format!(
            "output '{}' has shape {:?}, expected [{rows}, classes]",
            o.name, o.shape
        )),
    }
    .map_err(|why| answer.not_protocol(why))?;
    let values: Vec<f32> = match (size, &o.data) {
        (Some(size), _) => {
            let bytes = raw
                .get(..size)
                .ok_or_else(|| answer.not_protocol("the binary output is cut short"))?;
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        (None, Some(data)) => data.numbers.clone(),
        (None, None) => {
            return Err(answer.not_protocol(format!("output '{}' has no data", o.name)));
        }
    };
    // No overflow: rows and classes are both bounded.
    if values.len() != rows * classes {
        return Err(answer.not_protocol(format!(
            "output '{}' holds {} values, its shape says {}",
            o.name,
            values.len(),
            rows * classes
        )));
    }
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(answer.not_protocol(format!("output '{}' holds {bad}", o.name)));
    }
    Ok((values, classes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(body: Vec<u8>, header_length: Option<usize>) -> Answer {
        Answer {
            url: "http://x/v2/models/m/infer".into(),
            status: 200,
            header_length,
            content_type: String::new(),
            body,
        }
    }

    #[test]
    fn json_requests_write_floats_as_python_clients_do_and_read_back_the_same() {
        let inputs: Vec<f32> = (0..2 * INPUT_LEN)
            .map(|i| (i % 256) as f32 / 255.0)
            .collect();
        let body = infer_request("input", &inputs, false).unwrap();
        let text = String::from_utf8(body.bytes).unwrap();
        // 1/255 as the f64 it is, as numpy's tolist() gives it; not f32's shortest "0.003921569".
        assert!(
            text.contains(&format!("{},", f64::from(inputs[1]))),
            "{}",
            &text[..200]
        );
        let read: InferRequestJson<FlatData> = serde_json::from_str(&text).unwrap();
        assert_eq!(read.inputs[0].shape, [2, 3, 32, 32]);
        assert_eq!(read.inputs[0].data.as_ref().unwrap().numbers, inputs);
        let binary = infer_request("input", &inputs, true).unwrap();
        let (_, length) = &binary.headers[0];
        let head: InferRequestJson<FlatData> =
            serde_json::from_slice(&binary.bytes[..length.parse().unwrap()]).unwrap();
        assert!(head.inputs[0].data.is_none());
        assert_eq!(
            head.inputs[0].parameters.as_ref().unwrap()["binary_data_size"],
            2 * INPUT_LEN * 4
        );
    }

    #[test]
    fn json_and_binary_answers_give_the_same_rows() {
        let probs = [0.25f32, 0.75, 0.5, 0.5];
        let json = serde_json::to_vec(&json!({"outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [[0.25, 0.75], [0.5, 0.5]]}
        ]}))
        .unwrap();
        assert_eq!(
            infer_response(&answer(json, None), "probabilities", 2).unwrap(),
            (probs.to_vec(), 2)
        );
        let mut body = serde_json::to_vec(&json!({"outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}
        ]}))
        .unwrap();
        let len = body.len();
        probs.iter().for_each(|p| body.extend(p.to_le_bytes()));
        assert_eq!(
            infer_response(&answer(body, Some(len)), "probabilities", 2).unwrap(),
            (probs.to_vec(), 2)
        );
    }

    #[test]
    fn answers_that_are_not_the_protocol_are_refused() {
        let wrong_rows = serde_json::to_vec(&json!({"outputs": [
            {"name": "p", "datatype": "FP32", "shape": [3, 2], "data": [0, 0, 0, 0, 0, 0]}
        ]}))
        .unwrap();
        let e = infer_response(&answer(wrong_rows, None), "p", 2).unwrap_err();
        assert!(
            e.to_string().contains("not the Open Inference Protocol"),
            "{e}"
        );
        let e = infer_response(&answer(b"<html>".to_vec(), None), "p", 2).unwrap_err();
        assert!(
            e.to_string().starts_with("http://x/v2/models/m/infer: "),
            "{e}"
        );
        let short = infer_response(&answer(b"{}".to_vec(), Some(10)), "p", 2).unwrap_err();
        assert!(short.to_string().contains("10-byte JSON header"), "{short}");
    }

    #[test]
    fn class_counts_beyond_the_bound_are_the_servers_mistake() {
        let huge = serde_json::to_vec(&json!({"outputs": [
            {"name": "p", "datatype": "FP32", "shape": [2, i64::MAX], "data": [0, 0]}
        ]}))
        .unwrap();
        let e = infer_response(&answer(huge, None), "p", 2).unwrap_err();
        assert!(e.to_string().contains("more than the 65536 classes"), "{e}");
        let metadata = |c: i64| -> ModelMetadata {
            serde_json::from_value(
                json!({"name": "m", "outputs": [{"name": "p", "shape": [-1, c]}]}),
            )
            .unwrap()
        };
        assert_eq!(metadata(10).output_classes(), Ok(Some(10)));
        assert_eq!(metadata(-1).output_classes(), Ok(None));
        let e = metadata(1 << 62).output_classes().unwrap_err();
        assert!(e.contains("[-1, 4611686018427387904]"), "{e}");
        // A list of names longer than the bound is refused while it is read.
        let names = vec![""; MAX_CLASSES + 1];
        let e = serde_json::from_value::<ModelMetadata>(json!({"name": "m", "classes": names}))
            .unwrap_err();
        assert!(e.to_string().contains("more than 65536 entries"), "{e}");
    }
}
