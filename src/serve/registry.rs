//! The models being served, swapped whole on every change so that no request waits for a load.
//!
//! Requests take a snapshot of the loaded models (an `Arc`, through `arc-swap`, without a lock)
//! and keep the [`Version`] they resolved until they are answered, so a request in flight
//! finishes on the version it started with. A load builds every new version (file read, model
//! placed on its device and run once, on a model thread of its own) beside the old ones, then
//! swaps the snapshot; a version whose file fails to load keeps its old model serving. An old
//! version's model thread ends once its last request is answered (its [`Batcher`] dropped).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use anyhow::{Result, bail};
use arc_swap::ArcSwap;
use burn::tensor::Device;

use super::batcher::{BatchConfig, Batcher, Worker};
use super::error::ApiError;
use super::metrics::Metrics;
use super::repository::{self, Source};
use super::stats::ModelStats;
use crate::artifact::export::load_model;
use crate::protocol::metadata::IndexEntry;
use crate::protocol::names::{READY, UNAVAILABLE};

/// One loaded version of a model.
pub struct Version {
    /// The model's name.
    pub name: String,
    /// Its version number.
    pub version: u64,
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// The way to its model thread.
    pub batcher: Batcher,
    /// What it has done; kept across reloads of the same version.
    pub stats: Arc<ModelStats>,
}

/// The loaded versions of one model, and those whose last load failed.
#[derive(Clone, Default)]
pub struct Model {
    /// Versions answering requests.
    pub versions: BTreeMap<u64, Arc<Version>>,
    /// Why the last load of a version failed (it may still answer with its previous file).
    pub failed: BTreeMap<u64, String>,
}

impl Model {
    /// The highest loaded version: what `/v2/models/NAME/...` serves.
    pub fn latest(&self) -> Option<&Arc<Version>> {
        self.versions.values().next_back()
    }
}

/// Every loaded model, by name: one immutable snapshot.
#[derive(Clone, Default)]
pub struct Models {
    pub models: BTreeMap<String, Model>,
}

/// The models being served and how to (re)load them.
pub struct Registry {
    current: ArcSwap<Models>,
    source: Source,
    /// The model `/v1/predict` and `/v1/explain` use, when loaded.
    default_name: String,
    device: Device,
    batching: BatchConfig,
    metrics: Arc<Metrics>,
    /// The model threads started, joined at shutdown.
    workers: Mutex<Vec<Worker>>,
    /// Held through a load or unload: one change at a time, each seeing the last.
    changing: Mutex<()>,
}

/// A poisoned lock only means a load panicked; what it guards is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// A registry with nothing loaded yet.
    pub fn new(
        source: Source,
        default_name: String,
        device: Device,
        batching: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            current: ArcSwap::from_pointee(Models::default()),
            source,
            default_name,
            device,
            batching,
            metrics,
            workers: Mutex::new(Vec::new()),
            changing: Mutex::new(()),
        }
    }

    /// The models loaded now.
    pub fn snapshot(&self) -> Arc<Models> {
        self.current.load_full()
    }

    /// The model names the source holds now.
    fn names_in_source(&self) -> Result<Vec<String>> {
        match &self.source {
            Source::File { name, .. } => Ok(vec![name.clone()]),
            Source::Repository(dir) => repository::model_names(dir),
        }
    }

    /// The version files of `name` in the source now.
    fn files_of(&self, name: &str) -> Result<BTreeMap<u64, PathBuf>> {
        match &self.source {
            Source::File { name: only, path } if only == name => {
                Ok(BTreeMap::from([(1, path.clone())]))
            }
            Source::File { .. } => Ok(BTreeMap::new()),
            Source::Repository(dir) => repository::model_versions(dir, name),
        }
    }

    /// Loads every model of the source at startup: any version that fails is an error.
    pub fn load_all(&self) -> Result<()> {
        for name in self.names_in_source()? {
            if let Err(reason) = self.load(&name) {
                bail!("{reason}");
            }
        }
        Ok(())
    }

    /// Reads the whole source again (SIGHUP): every model loaded anew, models gone from it
    /// unloaded. Gives the reasons of the loads that failed.
    pub fn reload_all(&self) -> Vec<String> {
        let mut names = match self.names_in_source() {
            Ok(names) => names,
            Err(e) => return vec![format!("{e:#}")],
        };
        let mut failures = Vec::new();
        for gone in self.snapshot().models.keys() {
            if !names.contains(gone) {
                self.unload(gone);
            }
        }
        names.dedup();
        for name in names {
            if let Err(reason) = self.load(&name) {
                failures.push(reason);
            }
        }
        failures
    }

    /// Reads the versions of `name` from the source again and builds each beside the one
    /// serving; the new set is swapped in at once. Versions no longer in the source stop being
    /// served; a version that fails to load keeps its old model, if it had one. `Err` gives the
    /// reasons, one per failed version, or says that the source has no such model.
    pub fn load(&self, name: &str) -> Result<(), String> {
        // A name from a URL must not reach outside the repository (`..`, `a/../b`).
        repository::check_model_name(name)?;
        let _one_at_a_time = lock(&self.changing);
        let files = self.files_of(name).map_err(|e| format!("{e:#}"))?;
        if files.is_empty() {
            return Err(match &self.source {
                Source::Repository(dir) => format!(
                    "model '{name}': {} holds no version (expected {name}/<version>/{})",
                    dir.join(name).display(),
                    repository::MODEL_FILE
                ),
                Source::File { name: only, .. } => {
                    format!("unknown model '{name}'; this server serves '{only}'")
                }
            });
        }
        let before = self.snapshot();
        let old = before.models.get(name).cloned().unwrap_or_default();
        let mut new = Model::default();
        let mut reasons = Vec::new();
        for (version, path) in files {
            let stats = old
                .versions
                .get(&version)
                .map_or_else(Arc::default, |v| Arc::clone(&v.stats));
            match self.build(name, version, path, stats) {
                Ok(built) => {
                    new.versions.insert(version, Arc::new(built));
                }
                Err(e) => {
                    let reason = format!("{e:#}");
                    if let Some(serving) = old.versions.get(&version) {
                        new.versions.insert(version, Arc::clone(serving));
                    }
                    reasons.push(format!("model '{name}' version {version}: {reason}"));
                    new.failed.insert(version, reason);
                }
            }
        }
        let mut models = (*before).clone();
        models.models.insert(name.to_string(), new);
        self.current.store(Arc::new(models));
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    /// Stops serving `name`; its requests in flight still finish. `false` when it was not loaded.
    pub fn unload(&self, name: &str) -> bool {
        let _one_at_a_time = lock(&self.changing);
        let before = self.snapshot();
        if !before.models.contains_key(name) {
            return false;
        }
        let mut models = (*before).clone();
        models.models.remove(name);
        self.current.store(Arc::new(models));
        true
    }

    fn build(
        &self,
        name: &str,
        version: u64,
        path: PathBuf,
        stats: Arc<ModelStats>,
    ) -> Result<Version> {
        let started = Instant::now();
        let loaded = load_model(&path)?;
        let classes = loaded.config.classes.clone();
        let (batcher, worker) = Batcher::start(
            loaded,
            self.device.clone(),
            self.batching,
            Arc::clone(&self.metrics),
            Arc::clone(&stats),
        )?;
        self.metrics
            .set_model_load_seconds(started.elapsed().as_secs_f64());
        let mut workers = lock(&self.workers);
        // Threads of versions no longer served end by themselves; forget them.
        workers.retain(|w| !w.is_finished());
        workers.push(worker);
        Ok(Version {
            name: name.to_string(),
            version,
            classes,
            batcher,
            stats,
        })
    }

    /// Whether every loaded version's model thread is running.
    pub fn is_ready(&self) -> bool {
        self.snapshot()
            .models
            .values()
            .flat_map(|m| m.versions.values())
            .all(|v| v.batcher.is_ready())
    }

    /// The version a `/v2/models/NAME[/versions/VERSION]` path names; 404 when none is loaded.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<Version>, ApiError> {
        let snapshot = self.snapshot();
        let Some(model) = snapshot.models.get(name) else {
            let served: Vec<String> = snapshot.models.keys().map(|n| format!("'{n}'")).collect();
            let served = if served.is_empty() {
                "none is loaded".to_string()
            } else {
                format!("this server serves {}", served.join(", "))
            };
            return Err(ApiError::not_found(format!(
                "unknown model '{name}'; {served}"
            )));
        };
        let found = match version {
            None => model.latest(),
            // Only the number as the versions are listed: not `+1` or `01`.
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| n.to_string() == v)
                .and_then(|n| model.versions.get(&n)),
        };
        found.cloned().ok_or_else(|| {
            let versions: Vec<String> = model.versions.keys().map(u64::to_string).collect();
            let asked = version.map_or_else(String::new, |v| format!(" '{v}'"));
            ApiError::not_found(format!(
                "model '{name}' has no loaded version{asked}; its versions are [{}]",
                versions.join(", ")
            ))
        })
    }

    /// The versions a statistics request names: every loaded one (no name), every version of a
    /// model, or one version; 404 for a model or version that is not loaded.
    pub fn stats_versions(
        &self,
        name: Option<&str>,
        version: Option<&str>,
    ) -> Result<Vec<Arc<Version>>, ApiError> {
        let snapshot = self.snapshot();
        Ok(match (name, version) {
            (None, _) => {
                let all = snapshot.models.values().flat_map(|m| m.versions.values());
                all.cloned().collect()
            }
            (Some(name), Some(v)) => vec![self.resolve(name, Some(v))?],
            (Some(name), None) => {
                // 404 for a model that is not loaded; then all its versions.
                self.resolve(name, None)?;
                let versions = snapshot.models.get(name).map(|m| m.versions.values());
                versions.into_iter().flatten().cloned().collect()
            }
        })
    }

    /// The version `/v1/predict` and `/v1/explain` use: the highest version of the model named
    /// by `--model-name` or, when the server holds a single model, of that one.
    pub fn default_version(&self) -> Result<Arc<Version>, ApiError> {
        let snapshot = self.snapshot();
        let name = match snapshot.models.get_key_value(&self.default_name) {
            Some((name, _)) => name.clone(),
            None if snapshot.models.len() == 1 => {
                snapshot.models.keys().next().cloned().unwrap_or_default()
            }
            None => {
                return Err(ApiError::not_found(format!(
                    "no default model: /v1 routes use the model named '{}' (--model-name), or the \
                     only model when one is loaded, and {} models are loaded",
                    self.default_name,
                    snapshot.models.len()
                )));
            }
        };
        self.resolve(&name, None)
    }

    /// The repository index: every model of the source and every loaded one, with each version's
    /// state.
    pub fn index(&self) -> Result<Vec<IndexEntry>, String> {
        let snapshot = self.snapshot();
        let mut names = self.names_in_source().map_err(|e| format!("{e:#}"))?;
        names.extend(snapshot.models.keys().cloned());
        names.sort();
        names.dedup();
        let mut entries = Vec::new();
        for name in names {
            let Some(model) = snapshot.models.get(&name) else {
                entries.push(IndexEntry {
                    name,
                    version: None,
                    state: Some(UNAVAILABLE.into()),
                    reason: Some("unloaded".into()),
                });
                continue;
            };
            let versions = model.versions.keys().chain(model.failed.keys());
            let mut versions: Vec<u64> = versions.copied().collect();
            versions.sort_unstable();
            versions.dedup();
            for version in versions {
                let serving = model.versions.contains_key(&version);
                let reason = match model.failed.get(&version) {
                    Some(why) if serving => {
                        format!("the last load failed, the previous file still serves: {why}")
                    }
                    Some(why) => why.clone(),
                    None => String::new(),
                };
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: Some(version.to_string()),
                    state: Some(if serving { READY } else { UNAVAILABLE }.into()),
                    reason: Some(reason),
                });
            }
        }
        Ok(entries)
    }

    /// Stops serving everything and waits for the model threads to end: call once no request
    /// can arrive any more.
    pub fn shutdown(&self) {
        self.current.store(Arc::new(Models::default()));
        let workers = std::mem::take(&mut *lock(&self.workers));
        for worker in workers {
            worker.join();
        }
    }
}
