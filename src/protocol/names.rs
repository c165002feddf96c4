//! The protocol's names, as both ends spell them: routes, headers, datatypes, parameters, and
//! the tensors of a maas model.

/// The model's one input.
pub const INPUT_NAME: &str = "input";
/// The model's one output.
pub const OUTPUT_NAME: &str = "probabilities";

/// The datatype of preprocessed pixels and of the probabilities.
pub const FP32: &str = "FP32";
/// The datatype of encoded image files.
pub const BYTES: &str = "BYTES";

/// The header of the binary tensor data extension: the length of the JSON part of a body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The content type of a JSON body.
pub const JSON_CONTENT: &str = "application/json";
/// The content type of a body with binary tensor data.
pub const BINARY_CONTENT: &str = "application/octet-stream";

/// An input's (or output's) parameter: how many bytes of binary data it has after the JSON.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// The request's parameter: every output in binary.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// A requested output's parameter: this one in binary.
pub const BINARY_DATA: &str = "binary_data";
/// The classification extension's parameter (not supported: maas gives probabilities).
pub const CLASSIFICATION: &str = "classification";
/// The shared memory extension's parameter (not supported).
pub const SHARED_MEMORY_REGION: &str = "shared_memory_region";

/// The extension that lets a request and its answer carry tensors as raw bytes.
pub const BINARY_EXTENSION: &str = "binary_tensor_data";
/// The protocol extensions `maas serve` offers, in `GET /v2` and gRPC's ServerMetadata.
pub const EXTENSIONS: [&str; 3] = [BINARY_EXTENSION, "model_repository", "statistics"];
/// The server's name and its models' platform, in the metadata.
pub const SERVER_NAME: &str = "maas";

/// A repository index entry's state when the version serves.
pub const READY: &str = "READY";
/// A repository index entry's state when it does not.
pub const UNAVAILABLE: &str = "UNAVAILABLE";

/// `GET` the server's metadata.
pub const SERVER_PATH: &str = "/v2";

/// The path of a model, or of one of its versions: `/v2/models/NAME[/versions/VERSION]`.
pub fn model_path(name: &str, version: Option<&str>) -> String {
    match version {
        Some(version) => format!("/v2/models/{name}/versions/{version}"),
        None => format!("/v2/models/{name}"),
    }
}

/// The infer route under a model's path.
pub fn infer_path(model_path: &str) -> String {
    format!("{model_path}/infer")
}

/// `GET` the models a KServe server serves.
pub const MODELS_PATH: &str = "/v2/models";
/// `POST` Triton's index of a model repository.
pub const REPOSITORY_INDEX_PATH: &str = "/v2/repository/index";
