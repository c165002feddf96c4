//! The JSON of the v2 REST infer messages, one schema for both ends: `maas serve` reads requests
//! and writes answers with it, the `--url` client writes requests and reads answers. `D` is a
//! tensor's `data`: what a writer holds (a slice of floats), [`FlatData`] for a reader.
//!
//! [`FlatData`]: super::tensor_data::FlatData

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::metadata::{MAX_TENSORS, bounded};

/// A message's or a tensor's `parameters`.
pub type Parameters = Map<String, Value>;

/// `parameters` holding one entry.
pub fn parameter(key: &str, value: impl Into<Value>) -> Parameters {
    Parameters::from_iter([(key.to_string(), value.into())])
}

/// `POST /v2/models/{name}[/versions/{v}]/infer`: the body, or its JSON part with the binary
/// extension.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
pub struct InferRequestJson<D> {
    /// The client's id, echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The request's parameters (`binary_data_output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// The input tensors.
    pub inputs: Vec<TensorJson<D>>,
    /// The outputs asked for; none: every output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutputJson>>,
}

/// An input of a request or an output of an answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
pub struct TensorJson<D> {
    /// Its name.
    pub name: String,
    /// Its datatype.
    pub datatype: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its parameters (`binary_data_size` when its data follows the JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Its data in JSON, when not in binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<D>,
}

/// An output a request asks for.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestedOutputJson {
    /// Its name.
    pub name: String,
    /// Its parameters (`binary_data`, `classification`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

/// The answer to an infer request, or its JSON part with the binary extension.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
pub struct InferResponseJson<D> {
    /// The model that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The request's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The output tensors, at most [`MAX_TENSORS`] read.
    #[serde(deserialize_with = "bounded::<_, _, MAX_TENSORS>")]
    pub outputs: Vec<TensorJson<D>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::names::BINARY_DATA_OUTPUT;
    use crate::protocol::tensor_data::FlatData;

    /// What one end writes the other reads, with nothing absent written as `null`.
    #[test]
    fn what_one_end_writes_the_other_reads() {
        let values = [0.0f32, 0.5, 1.0];
        let sent = InferRequestJson {
            id: Some("7".into()),
            parameters: Some(parameter(BINARY_DATA_OUTPUT, true)),
            inputs: vec![TensorJson {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, 3],
                parameters: None,
                data: Some(&values[..]),
            }],
            outputs: None,
        };
        let json = serde_json::to_value(&sent).unwrap();
        assert!(json.get("outputs").is_none(), "{json}");
        assert!(json["inputs"][0].get("parameters").is_none(), "{json}");
        let read: InferRequestJson<FlatData> = serde_json::from_value(json).unwrap();
        assert_eq!(read.id.as_deref(), Some("7"));
        assert_eq!(read.inputs[0].data.as_ref().unwrap().numbers, values);
        assert_eq!(read.parameters.unwrap()[BINARY_DATA_OUTPUT], true);

        let answer = InferResponseJson {
            model_name: Some("m".into()),
            model_version: Some("1".into()),
            id: None,
            outputs: vec![TensorJson {
                name: "probabilities".into(),
                datatype: "FP32".into(),
                shape: vec![1, 3],
                parameters: None,
                data: Some(&values[..]),
            }],
        };
        let read: InferResponseJson<FlatData> =
            serde_json::from_slice(&serde_json::to_vec(&answer).unwrap()).unwrap();
        assert_eq!(read.outputs[0].shape, [1, 3]);
        assert_eq!(read.outputs[0].data.as_ref().unwrap().numbers, values);
        // A reader takes no more than MAX_TENSORS outputs.
        let many = serde_json::json!({"outputs": vec![serde_json::json!({"name": "p", "datatype": "FP32", "shape": [1]}); MAX_TENSORS + 1]});
        let e = serde_json::from_value::<InferResponseJson<FlatData>>(many).unwrap_err();
        assert!(e.to_string().contains("more than 1024 entries"), "{e}");
    }
}
