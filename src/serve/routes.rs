//! The routes: the Open Inference Protocol (KServe v2) with Triton's repository and statistics
//! extensions, `/v1/predict`, `/v1/explain` and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
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
use super::batcher::{Answer, Want, wrong_kind};
use super::body::refuse;
use super::decode::SMALL_IMAGE_PIXELS;
use super::error::ApiError;
use super::protocol;
use super::registry::Version;
use super::state::{Admission, AppState};
use super::stats;
use super::v2;
use crate::data::preprocess::{INPUT_LEN, small_image_to_input};
use crate::protocol::checks::encode_base64;
use crate::protocol::metadata::ServerMetadata;

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
        .route("/v2/models/stats", get(model_stats))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(model_stats),
        )
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
        // Guarded by the admin key, not the inference keys (auth::check_admin).
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(load_model))
        .route("/v2/repository/models/{name}/unload", post(unload_model))
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

/// The model version a `/v2/models/{name}[/versions/{version}]` path names; 404 when it is not
/// loaded. The request keeps it until answered, so a reload never cuts it short.
struct ServedModel(Arc<Version>);

impl FromRequestParts<AppState> for ServedModel {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let name = params.get("name").map_or("", String::as_str);
        let version = params.get("version").map(String::as_str);
        state.registry.resolve(name, version).map(ServedModel)
    }
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.not_ready() {
        None => Json(json!({ "ready": true })).into_response(),
        Some(why) => ApiError::unavailable(why).into_response(),
    }
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata::maas())
}

async fn model_metadata(
    State(state): State<AppState>,
    ServedModel(model): ServedModel,
) -> Json<crate::protocol::metadata::ModelMetadata> {
    Json(v2::model_metadata(&state, &model))
}

async fn model_ready(ServedModel(model): ServedModel) -> Response {
    if model.batcher.is_ready() {
        return Json(json!({ "name": model.name, "ready": true })).into_response();
    }
    ApiError::unavailable(format!("model '{}' is not loaded", model.name)).into_response()
}

async fn infer(
    State(state): State<AppState>,
    model: Result<ServedModel, ApiError>,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let deadline = state.deadline();
    let checked = model.and_then(|model| {
        let place = state.admit()?;
        let header_length = protocol::header_length(request.headers())?;
        Ok((model, place, header_length))
    });
    let (ServedModel(model), _place, header_length) = match checked {
        Ok(ok) => ok,
        Err(e) => return Err(refuse(request, e).await),
    };
    let answer = infer_on(&state, &model, request, header_length, deadline).await;
    model.stats.request(answer.is_ok(), started.elapsed());
    answer
}

/// An admitted infer request on `model`: its body read, then the v2 infer path, in REST's format.
async fn infer_on(
    state: &AppState,
    model: &Version,
    request: Request,
    header_length: Option<usize>,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let body = state.read_body(request, deadline).await?;
    let read = move || Ok(protocol::parse(&body, header_length)?);
    v2::infer(state, model, deadline, read, |answer| {
        protocol::response(&answer)
    })
    .await
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
    match r.model.batcher.run(r.values, 1, want, r.deadline).await? {
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
    let (prediction, picture) = match r.model.batcher.run(r.values, 1, want, r.deadline).await? {
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
    body["picture_png"] = Value::String(encode_base64(&picture));
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
            let model = state.registry.default_version()?;
            let classes = model.classes.len();
            // The default asks for no more classes than the model has (a two-class model).
            let top_k = query.top_k.unwrap_or(3.min(classes));
            if !(1..=classes).contains(&top_k) {
                return Err(ApiError::bad_request(format!(
                    "top_k must be 1 to {classes}"
                )));
            }
            let file = query.name.unwrap_or_else(|| "request".into());
            Ok((state.admit()?, model, file, top_k))
        });
    let (place, model, file, top_k) = match checked {
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
        model,
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
    /// The default model's version it runs on.
    model: Arc<Version>,
    deadline: Deadline,
    values: Vec<f32>,
    file: String,
    top_k: usize,
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    let snapshot = state.registry.snapshot();
    let versions: Vec<_> = snapshot
        .models
        .values()
        .flat_map(|m| m.versions.iter())
        .map(|(&v, version)| (version.name.as_str(), v, &*version.stats))
        .collect();
    stats::write_metrics(&mut text, &versions);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Triton's statistics extension: every loaded version, those of one model, or one version.
async fn model_stats(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let chosen = state.registry.stats_versions(
        params.get("name").map(String::as_str),
        params.get("version").map(String::as_str),
    )?;
    let entries: Vec<Value> = chosen
        .iter()
        .map(|v| v.stats.json(&v.name, v.version))
        .collect();
    Ok(Json(json!({ "model_stats": entries })))
}

/// `POST /v2/repository/index`: every model of the repository, with each version's state.
async fn repository_index(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::check_admin(state.admin_key.as_ref(), &headers)?;
    let registry = Arc::clone(&state.registry);
    let index = tokio::task::spawn_blocking(move || registry.index())
        .await
        .map_err(|_| ApiError::internal("reading the repository failed unexpectedly"))?
        .map_err(ApiError::internal)?;
    Ok(Json(json!(index)))
}

/// `POST /v2/repository/models/{name}/load`: reads the model's folder again and serves what it
/// holds now; 400 with the reason when a version fails (its previous file keeps serving).
///
/// The admin key is checked from the headers before any of the body is read, and the body is
/// then read as an infer request's is: within the deadline, holding a place among the requests
/// in progress. A keyless or trickled body costs no more than an infer request's.
async fn load_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let deadline = state.deadline();
    let checked =
        auth::check_admin(state.admin_key.as_ref(), request.headers()).and_then(|()| state.admit());
    let _place = match checked {
        Ok(place) => place,
        Err(e) => return Err(refuse(request, e).await),
    };
    let body = state.read_body(request, deadline).await?;
    refuse_overrides(&body)?;
    let registry = Arc::clone(&state.registry);
    let loading = name.clone();
    tokio::task::spawn_blocking(move || registry.load(&loading))
        .await
        .map_err(|_| ApiError::internal("loading the model failed unexpectedly"))?
        .map_err(ApiError::bad_request)?;
    Ok(Json(json!({ "name": name, "loaded": true })))
}

/// Triton's load request may carry a configuration or files to load instead of the repository's;
/// maas loads only what the repository holds, and says so rather than ignoring them.
fn refuse_overrides(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the load request is not JSON: {e}")))?;
    match request["parameters"].as_object() {
        Some(parameters) => refuse_override_keys(parameters.keys().map(String::as_str)),
        None => Ok(()),
    }
}

/// 400 when the parameters of a load request (REST or gRPC) name a configuration or files to
/// load instead of the repository's.
pub(super) fn refuse_override_keys<'a>(
    mut keys: impl Iterator<Item = &'a str>,
) -> Result<(), ApiError> {
    if keys.any(|k| k == "config" || k.starts_with("file:")) {
        return Err(ApiError::bad_request(
            "maas loads models from its repository only: a config or files in the load request are not supported",
        ));
    }
    Ok(())
}

/// `POST /v2/repository/models/{name}/unload`: stops serving the model; requests in flight
/// finish.
async fn unload_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::check_admin(state.admin_key.as_ref(), &headers)?;
    let registry = Arc::clone(&state.registry);
    let unloading = name.clone();
    // As in Triton, unloading a model that is not loaded is no error.
    let was_loaded = tokio::task::spawn_blocking(move || registry.unload(&unloading))
        .await
        .map_err(|_| ApiError::internal("unloading the model failed unexpectedly"))?;
    Ok(Json(
        json!({ "name": name, "unloaded": true, "was_loaded": was_loaded }),
    ))
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
