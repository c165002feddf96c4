//! A model deployed behind a URL: probabilities for a batch of inputs, as a model file gives
//! them, over the v2 protocol; and explanations over maas's `/v1/explain`.

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;

use super::client::Client;
use super::config::RemoteConfig;
use super::protocol::{
    IndexEntry, ModelList, ModelMetadata, ServerMetadata, infer_request, infer_response,
};
use crate::data::preprocess::INPUT_LEN;
use crate::infer::predict::{Probabilities, Ranked};
use crate::protocol::checks::decode_base64;
use crate::protocol::names::{
    INPUT_NAME, JSON_CONTENT, MODELS_PATH, OUTPUT_NAME, REPOSITORY_INDEX_PATH, SERVER_PATH,
    infer_path, model_path,
};

/// Most images in one request: a 3 MiB body, well under servers' usual limits (maas: 16 MiB).
pub const MAX_IMAGES_PER_REQUEST: usize = 256;
/// Requests in flight at once, so that the server batches while the client waits.
const IN_FLIGHT: usize = 4;
/// The model name `maas serve` gives by default, for a maas server that does not list its models.
const MAAS_DEFAULT_MODEL: &str = "maas";

/// A model behind a v2 server.
pub struct RemoteModel {
    client: Client,
    had_key: bool,
    /// `/v2/models/{name}[/versions/{v}]`.
    path: String,
    input: String,
    output: String,
    binary: bool,
    classes: Vec<String>,
    named: bool,
}

impl RemoteModel {
    /// Asks the server what it serves and how: the binary extension, the model (the only one
    /// when `config` names none), its input and output names and its classes.
    pub fn connect(config: &RemoteConfig) -> Result<Self> {
        let client = Client::new(config)?;
        let had_key = config.api_key.is_some();
        let server: ServerMetadata = client.get(SERVER_PATH)?.ok(had_key)?.json()?;
        let name = match &config.model_name {
            Some(name) => name.clone(),
            None => only_model(&client, &server, had_key)?,
        };
        check_path_part("--model-name", &name)?;
        if let Some(version) = &config.model_version {
            check_path_part("--model-version", version)?;
        }
        let path = model_path(&name, config.model_version.as_deref());
        let answer = client.get(&path)?.ok(had_key)?;
        let metadata: ModelMetadata = answer.json()?;
        // Bounded before anything is sized by it (the class names below, each answer's rows).
        let shape_count = metadata
            .output_classes()
            .map_err(|why| answer.not_protocol(why))?;
        let first_name = |tensors: &Option<Vec<super::protocol::TensorMetadata>>, default: &str| {
            tensors
                .as_ref()
                .and_then(|t| t.first())
                .map_or_else(|| default.to_string(), |t| t.name.clone())
        };
        let mut model = Self {
            had_key,
            input: first_name(&metadata.inputs, INPUT_NAME),
            output: first_name(&metadata.outputs, OUTPUT_NAME),
            binary: config.binary.unwrap_or_else(|| server.binary()),
            classes: Vec::new(),
            named: false,
            path,
            client,
        };
        let from_file = match &config.classes_file {
            Some(file) => Some(read_classes(file)?),
            None => None,
        };
        let count = match shape_count {
            Some(count) => count,
            // The shape does not say: one image of zeros tells.
            None => model.infer(&[0.0; INPUT_LEN])?.1,
        };
        let (classes, named) = match (metadata.classes.filter(|c| !c.is_empty()), from_file) {
            (Some(classes), _) => (classes, true),
            (None, Some((file, classes))) => {
                if classes.len() != count {
                    bail!(
                        "{file}: {} class names, but the model at {} has {count} classes",
                        classes.len(),
                        model.describe()
                    );
                }
                (classes, true)
            }
            (None, None) => ((0..count).map(|i| i.to_string()).collect(), false),
        };
        if classes.len() != count {
            bail!(
                "{}: the metadata names {} classes but the output has {count}",
                model.describe(),
                classes.len()
            );
        }
        model.classes = classes;
        model.named = named;
        Ok(model)
    }

    /// The model's URL: the server and the model in one name, for reports.
    pub fn describe(&self) -> String {
        format!("{}{}", self.client.base(), self.path)
    }

    /// The path of the model's infer route.
    pub fn infer_path(&self) -> String {
        infer_path(&self.path)
    }

    /// The name of the model's input tensor.
    pub fn input_name(&self) -> &str {
        &self.input
    }

    /// Whether requests carry binary tensors.
    pub fn binary(&self) -> bool {
        self.binary
    }

    /// Whether the class names came from the server or `--classes` (else they are indices).
    pub fn has_class_names(&self) -> bool {
        self.named
    }

    /// Takes `classes` as the class names, for a server that gives none (`eval` takes the
    /// dataset's); their number must be the model's.
    pub fn name_classes(&mut self, classes: Vec<String>) {
        if classes.len() == self.classes.len() {
            self.classes = classes;
            self.named = true;
        }
    }

    /// One infer request: probabilities and the number of classes.
    fn infer(&self, inputs: &[f32]) -> Result<(Vec<f32>, usize)> {
        let rows = inputs.len() / INPUT_LEN;
        let body = infer_request(&self.input, inputs, self.binary)?;
        let headers: Vec<(&str, String)> = body.headers.clone();
        let answer = self
            .client
            .post(&self.infer_path(), body.content_type, &headers, &body.bytes)?
            .ok(self.had_key)?;
        let (values, classes) = infer_response(&answer, &self.output, rows)?;
        if !self.classes.is_empty() && classes != self.classes.len() {
            return Err(answer.not_protocol(format!(
                "{classes} classes in the answer, {} in the metadata",
                self.classes.len()
            )));
        }
        Ok((values, classes))
    }

    /// Explains one encoded image through the server's `/v1/explain` (a maas server): the
    /// prediction and the PNG picture.
    pub fn explain(&self, image: &[u8], k: usize) -> Result<(Vec<Ranked>, Vec<u8>)> {
        let path = format!("/v1/explain?top_k={}", k.min(self.classes.len()).max(1));
        let answer = self
            .client
            .post(&path, "application/octet-stream", &[], image)?;
        if answer.status == 404 || answer.status == 405 {
            bail!(
                "{}: this server does not explain (HTTP {}): /v1/explain is maas serve's",
                answer.url,
                answer.status
            );
        }
        let answer = answer.ok(self.had_key)?;
        let explained: ExplainAnswer = answer.json()?;
        let picture = decode_base64(&explained.picture_png)
            .map_err(|e| answer.not_protocol(format!("picture_png: {e}")))?;
        Ok((explained.top_k, picture))
    }
}

impl Probabilities for RemoteModel {
    fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Up to [`MAX_IMAGES_PER_REQUEST`] images a request, [`IN_FLIGHT`] requests at a time.
    fn probabilities(&self, inputs: &[f32]) -> Result<Vec<f32>> {
        let requests: Vec<&[f32]> = inputs.chunks(MAX_IMAGES_PER_REQUEST * INPUT_LEN).collect();
        let mut out = Vec::with_capacity(inputs.len() / INPUT_LEN * self.classes.len());
        for group in requests.chunks(IN_FLIGHT) {
            let answers: Vec<Result<(Vec<f32>, usize)>> = if group.len() == 1 {
                vec![self.infer(group[0])]
            } else {
                std::thread::scope(|scope| {
                    let running: Vec<_> = group
                        .iter()
                        .map(|chunk| scope.spawn(move || self.infer(chunk)))
                        .collect();
                    running
                        .into_iter()
                        .map(|r| {
                            r.join()
                                .unwrap_or_else(|_| Err(anyhow!("a request thread failed")))
                        })
                        .collect()
                })
            };
            for answer in answers {
                out.extend(answer?.0);
            }
        }
        Ok(out)
    }
}

/// What `/v1/explain` answers, of what `explain` prints.
#[derive(Debug, Deserialize)]
struct ExplainAnswer {
    top_k: Vec<Ranked>,
    picture_png: String,
}

/// The server's only model: KServe lists its models at `GET /v2/models`, Triton (and maas with a
/// model repository) at `POST /v2/repository/index`; a maas server that lists neither serves
/// one model, by default called `maas`.
fn only_model(client: &Client, server: &ServerMetadata, had_key: bool) -> Result<String> {
    let mut names: Option<Vec<String>> = None;
    let listed = client.get(MODELS_PATH)?;
    if listed.status == 200 {
        names = listed.json::<ModelList>().ok().map(|l| l.models);
    } else if matches!(listed.status, 401 | 403) {
        listed.ok(had_key)?;
    }
    if names.is_none() {
        let index = client.post(REPOSITORY_INDEX_PATH, JSON_CONTENT, &[], b"{}")?;
        if index.status == 200 {
            names = index.json::<Vec<IndexEntry>>().ok().map(|entries| {
                let mut ready: Vec<String> = entries
                    .into_iter()
                    .filter(IndexEntry::ready)
                    .map(|e| e.name)
                    .collect();
                ready.dedup();
                ready
            });
        }
    }
    let base = client.base();
    match names {
        Some(mut names) if names.len() == 1 => Ok(names.remove(0)),
        Some(names) if names.is_empty() => bail!("{base}: the server serves no model"),
        Some(names) => bail!(
            "{base}: the server serves several models ({}): choose one with --model-name",
            crate::terminal::one_line(&names.join(", "), 300)
        ),
        None if server.name.as_deref() == Some("maas") => Ok(MAAS_DEFAULT_MODEL.to_string()),
        None => bail!("{base}: the server does not list its models: name one with --model-name"),
    }
}

/// A name or version that can stand in a URL path as it is.
fn check_path_part(flag: &str, value: &str) -> Result<()> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value == "." || value == ".." || !value.chars().all(fine) {
        bail!("{flag} {value:?}: use letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// `--classes FILE`: one class name a line, blank lines ignored. Gives the file's name too.
fn read_classes(path: &std::path::Path) -> Result<(String, Vec<String>)> {
    let shown = path.display().to_string();
    let bytes = crate::fsutil::read_regular(path, 1 << 20).with_context(|| shown.clone())?;
    let text = String::from_utf8_lossy(&bytes);
    let classes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if classes.is_empty() {
        bail!("{shown}: no class names (one a line)");
    }
    Ok((shown, classes))
}
