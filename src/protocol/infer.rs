//! An infer request and its answer, apart from any transport: what REST and gRPC decode their
//! messages into, and what they encode their answers from.

use super::checks::Input;
use super::metadata::dim;

/// A checked infer request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The client's request id, echoed back.
    pub id: Option<String>,
    /// The input tensor.
    pub input: Input,
    /// Whether the probabilities go back as raw bytes (REST's binary extension; gRPC always
    /// sends them raw).
    pub binary_output: bool,
}

/// The answer to an infer request: the probabilities of the model's one output.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// The request's id.
    pub id: Option<String>,
    /// Whether the request asked for raw bytes.
    pub binary_output: bool,
    /// `[rows, classes]` probabilities, row-major.
    pub probabilities: Vec<f32>,
    /// The classes of each row.
    pub classes: usize,
}

impl InferResponse {
    /// The output's shape, `[rows, classes]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.probabilities.len() / self.classes.max(1), self.classes]
    }

    /// [`Self::shape`] as tensor dimensions.
    pub fn dims(&self) -> Vec<i64> {
        self.shape().iter().map(|&n| dim(n)).collect()
    }

    /// The probabilities as raw little-endian floats, as the binary extension and gRPC's
    /// `raw_output_contents` carry them.
    pub fn raw(&self) -> Vec<u8> {
        self.probabilities
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect()
    }
}
