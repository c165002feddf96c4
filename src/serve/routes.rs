//! The routes: the Open Inference Protocol (KServe v2), `/v1/predict`, `/v1/explain` and
//! `/metrics`.

use std::collections::HashMap;
use std::time::Instant;

use tokio::time::Instant as Deadline;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, Keys};
use super::batcher::{Answer, Want};
use super::decode::SMALL_IMAGE_PIXELS;
use super::error::ApiError;
use super::protocol::{self, INPUT_NAME, MODEL_VERSION, OUTPUT_NAME};
use super::state::{Admission, AppState, refuse};
use crate::data::preprocess::{INPUT_LEN, SIDE, small_image_to_input};

/// Every route; all but health and metrics need a key when `keys` is given.
pub fn router(state: AppState, keys: Option<Keys>) -> Router {
    let mut protected = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v1/predict", post(predict))
        .route("/v1/explain", post(explain));
    if let Some(keys) = keys {
        protected = protected.route_layer(middleware::from_fn_with_state(keys, auth::require_key));
    }
    let max_body = state.max_body;
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        // The model routes read bodies themselves (AppState::read_body); this keeps the same limit
        // on any extractor that buffers one.
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Counts every answer by route template and status, and times it.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .observe_request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// A `/v2/models/{name}[/versions/{version}]` path naming the served model; 404 otherwise.
struct ServedModel;

impl FromRequestParts<AppState> for ServedModel {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let name = params.get("name").map_or("", String::as_str);
        if name != state.model_name {
            return Err(ApiError::not_found(format!(
                "unknown model '{name}'; this server serves '{}'",
                state.model_name
            )));
        }
        if let Some(version) = params
            .get("version")
            .filter(|v| v.as_str() != MODEL_VERSION)
        {
            return Err(ApiError::not_found(format!(
                "model '{name}' has no version '{version}'; its one version is '{MODEL_VERSION}'"
            )));
        }
        Ok(ServedModel)
    }
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.batcher.is_ready() {
        return Json(json!({ "ready": true })).into_response();
    }
    ApiError::unavailable("the model is not loaded").into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": "maas", "version": crate::VERSION, "extensions": ["binary_tensor_data"] }))
}

async fn model_metadata(State(state): State<AppState>, _: ServedModel) -> Json<Value> {
    Json(json!({
        "name": state.model_name,
        "versions": [MODEL_VERSION],
        "platform": "maas",
        "inputs": [{ "name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, SIDE, SIDE] }],
        "outputs": [{ "name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, state.classes.len()] }],
        "classes": state.classes,
    }))
}

async fn model_ready(State(state): State<AppState>, _: ServedModel) -> Response {
    if state.batcher.is_ready() {
        return Json(json!({ "name": state.model_name, "ready": true })).into_response();
    }
    ApiError::unavailable(format!("model '{}' is not loaded", state.model_name)).into_response()
}

async fn infer(
    State(state): State<AppState>,
    model: Result<ServedModel, ApiError>,
    request: Request,
) -> Result<Response, ApiError> {
    let deadline = state.deadline();
    let checked = model
        .and_then(|_| state.admit())
        .and_then(|place| Ok((place, protocol::header_length(request.headers())?)));
    let (_place, header_length) = match checked {
        Ok(ok) => ok,
        Err(e) => return Err(refuse(request, e).await),
    };
    let body = state.read_body(request, deadline).await?;
    let (id, binary, values, rows) = state
        .decode(deadline, move |decoding| {
            let request = protocol::parse(&body, header_length)?;
            let (values, rows) = request.input.into_values(decoding)?;
            Ok((request.id, request.binary_output, values, rows))
        })
        .await?;
    match state
        .batcher
        .run(values, rows, Want::Probabilities, deadline)
        .await?
    {
        Answer::Probabilities(p) => protocol::response(
            &state.model_name,
            id.as_deref(),
            binary,
            &p,
            state.classes.len(),
        ),
        _ => Err(wrong_kind()),
    }
}

fn wrong_kind() -> ApiError {
    ApiError::internal("the model answered with the wrong kind of result")
}

#[derive(Debug, Deserialize)]
struct PredictQuery {
    name: Option<String>,
    top_k: Option<usize>,
}

/// One image file as the body; the answer is one entry of `predict --json`.
async fn predict(
    State(state): State<AppState>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let r = image_request(&state, query, request).await?;
    let want = Want::Prediction {
        file: r.file,
        top_k: r.top_k,
    };
    match state.batcher.run(r.values, 1, want, r.deadline).await? {
        Answer::Prediction(p) => Ok(Json(p).into_response()),
        _ => Err(wrong_kind()),
    }
}

/// One image file as the body; the answer is the prediction with the picture `maas explain`
/// draws (the image beside the heat map of what pushed the predicted class up): in JSON with
/// the PNG in base64 (`picture_png`), or the PNG itself, with the prediction in `X-Maas-*`
/// headers, when the client sends `Accept: image/png`.
async fn explain(
    State(state): State<AppState>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let wants_png = accepts_png(request.headers());
    let r = image_request(&state, query, request).await?;
    let want = Want::Explanation {
        file: r.file,
        top_k: r.top_k,
    };
    let (prediction, picture) = match state.batcher.run(r.values, 1, want, r.deadline).await? {
        Answer::Explanation {
            prediction,
            picture_png,
        } => (prediction, picture_png),
        _ => return Err(wrong_kind()),
    };
    if wants_png {
        let mut response = ([(header::CONTENT_TYPE, "image/png")], picture).into_response();
        let headers = response.headers_mut();
        // Class names come from folder names: only what a header can carry goes there.
        if let Ok(label) = header::HeaderValue::from_str(&prediction.label) {
            headers.insert("x-maas-label", label);
        }
        headers.insert("x-maas-index", prediction.index.into());
        if let Ok(p) = header::HeaderValue::from_str(&prediction.probability.to_string()) {
            headers.insert("x-maas-probability", p);
        }
        return Ok(response);
    }
    let mut body = serde_json::to_value(&prediction)
        .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))?;
    body["picture_png"] = Value::String(protocol::encode_base64(&picture));
    Ok(Json(body).into_response())
}

/// Whether the client asked for the picture itself rather than JSON.
fn accepts_png(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|kind| {
            kind.split(';')
                .next()
                .is_some_and(|k| k.trim() == "image/png")
        })
}

/// The steps `/v1/predict` and `/v1/explain` share: the query (`name`, `top_k`), admission,
/// the body within its limits, and the image decoded off the async threads.
async fn image_request(
    state: &AppState,
    query: Result<Query<PredictQuery>, QueryRejection>,
    request: Request,
) -> Result<ImageRequest, ApiError> {
    let deadline = state.deadline();
    let checked = query
        .map_err(|e| ApiError::bad_request(e.body_text()))
        .and_then(|Query(query)| {
            let top_k = query.top_k.unwrap_or(3);
            let classes = state.classes.len();
            if !(1..=classes).contains(&top_k) {
                return Err(ApiError::bad_request(format!(
                    "top_k must be 1 to {classes}"
                )));
            }
            let file = query.name.unwrap_or_else(|| "request".into());
            Ok((state.admit()?, file, top_k))
        });
    let (place, file, top_k) = match checked {
        Ok(ok) => ok,
        Err(e) => return Err(refuse(request, e).await),
    };
    let body = state.read_body(request, deadline).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty body: send an image file (PNG, JPEG, ...) as the request body",
        ));
    }
    // An image about the model's size decodes in microseconds, less than handing it to the
    // blocking pool and back costs (two thread wake-ups); a larger one could stall every
    // connection on this async thread, so it goes to the pool, within the pixel limits, as does
    // a broken one (whose error the general path words).
    let inline = SMALL_IMAGE_PIXELS.min(state.pixels.per_request());
    let values = match small_image_to_input(&body, inline) {
        Some(values) => values,
        None => {
            state
                .decode(deadline, move |decoding| {
                    let mut values = Vec::with_capacity(INPUT_LEN);
                    decoding.image(&body, &mut values)?;
                    Ok(values)
                })
                .await?
        }
    };
    Ok(ImageRequest {
        _place: place,
        deadline,
        values,
        file,
        top_k,
    })
}

/// An image request ready for the model.
struct ImageRequest {
    /// Its place among the requests in progress, held until the answer is sent.
    _place: Admission,
    deadline: Deadline,
    values: Vec<f32>,
    file: String,
    top_k: usize,
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    let message = format!("no route for {} {}", request.method(), request.uri().path());
    refuse(request, ApiError::not_found(message)).await
}

async fn method_not_allowed(request: Request) -> ApiError {
    let message = format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    );
    refuse(
        request,
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message),
    )
    .await
}
