//! What the v2 endpoints do, whatever the transport: REST ([`super::routes`]) and gRPC
//! ([`super::grpc`]) read their messages into [`crate::protocol`]'s neutral request, hand it here,
//! and write the neutral answer back in their own format.

use std::time::Instant;

use tokio::time::Instant as Deadline;

use super::decode::Decoding;
use super::error::ApiError;
use super::registry::Version;
use super::state::AppState;
use crate::data::preprocess::INPUT_LEN;
use crate::protocol::metadata::ModelMetadata;
use crate::protocol::names::INPUT_NAME;
use crate::protocol::{InferRequest, InferResponse, Input};

/// Runs an admitted infer request on `model`: `read` gives the request (it runs off the async
/// threads, where its images are then decoded within the request's pixel limit), the model's
/// batcher runs it, and `write` turns the answer into the transport's message. The time of each
/// step goes into the model's statistics.
pub async fn infer<T>(
    state: &AppState,
    model: &Version,
    deadline: Deadline,
    read: impl FnOnce() -> Result<InferRequest, ApiError> + Send + 'static,
    write: impl FnOnce(InferResponse) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let decoding = Instant::now();
    let (id, binary_output, values, rows) = state
        .decode(deadline, move |decoding| {
            let request = read()?;
            let (values, rows) = input_values(request.input, decoding)?;
            Ok((request.id, request.binary_output, values, rows))
        })
        .await?;
    model.stats.compute_input.add(decoding.elapsed());
    let probabilities = model.batcher.probabilities(values, rows, deadline).await?;
    let encoding = Instant::now();
    let answer = write(InferResponse {
        model_name: model.name.clone(),
        model_version: model.version.to_string(),
        id,
        binary_output,
        probabilities,
        classes: model.classes.len(),
    });
    model.stats.compute_output.add(encoding.elapsed());
    answer
}

/// Model input values and how many images they hold; encoded images are decoded here, one after
/// the other within the bounds of `decoding`, with the one preprocessing of training and
/// `predict`.
pub fn input_values(input: Input, decoding: &mut Decoding) -> Result<(Vec<f32>, usize), ApiError> {
    match input {
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

/// A served model's metadata, with every loaded version of it, as Triton lists them.
pub fn model_metadata(state: &AppState, model: &Version) -> ModelMetadata {
    let snapshot = state.registry.snapshot();
    let versions = snapshot
        .models
        .get(&model.name)
        .map(|m| m.versions.keys().map(u64::to_string).collect())
        .unwrap_or_default();
    ModelMetadata::maas(&model.name, versions, &model.classes)
}
