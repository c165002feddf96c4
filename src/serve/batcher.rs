//! Dynamic batching: requests from many connections, one forward pass.
//!
//! The model runs on one dedicated thread, never on tokio's: a forward pass is blocking CPU (or
//! GPU) work that would stall every connection sharing an async worker. Requests reach it
//! through a bounded queue ([`JobQueue`]), so an overload is answered with 503 instead of growing
//! memory without limit. The worker takes the first request, then keeps gathering until the batch
//! holds `max_batch` images, `max_wait` has passed, or every request in progress has joined (so a
//! lone client pays no wait), runs the model once and answers each request through its own
//! oneshot channel. The queue wakes the worker only when that happens, not once per request.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use burn::tensor::Device;
use tokio::sync::oneshot;

use super::error::ApiError;
use super::metrics::Metrics;
use super::queue::{JobQueue, Refused};
use super::stats::ModelStats;
use crate::artifact::export::LoadedModel;
use crate::data::preprocess::INPUT_LEN;
use crate::infer::explain::{Explainer, picture_png};
use crate::infer::predict::{Classifier, Prediction};

/// How the worker gathers requests.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most images in one forward pass (a single larger request still runs, alone).
    pub max_batch: usize,
    /// Longest the first request of a batch waits for others.
    pub max_wait: Duration,
    /// Most requests waiting in the queue.
    pub max_queue: usize,
}

/// What a request wants back.
#[derive(Debug, Clone)]
pub enum Want {
    /// The probabilities, `rows * classes` values.
    Probabilities,
    /// One labelled prediction (`rows` must be 1), as `predict --json` gives it.
    Prediction { file: String, top_k: usize },
    /// The prediction and the picture of what pushed it up (`rows` must be 1), as
    /// `maas explain` draws it.
    Explanation { file: String, top_k: usize },
}

/// The answer to a request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Row-major probabilities.
    Probabilities(Vec<f32>),
    /// A labelled prediction.
    Prediction(Prediction),
    /// A labelled prediction and its explanation picture, PNG.
    Explanation {
        prediction: Prediction,
        picture_png: Vec<u8>,
    },
}

struct Job {
    inputs: Vec<f32>,
    rows: usize,
    want: Want,
    reply: oneshot::Sender<Result<Answer, String>>,
    /// When it entered the queue.
    queued: Instant,
}

/// The sending side, cloned into every request handler.
#[derive(Clone)]
pub struct Batcher {
    queue: Arc<Producers>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// The queue as the handlers hold it: when the last of them lets go, the worker drains the queue
/// and ends.
struct Producers(Arc<JobQueue<Job>>);

impl Drop for Producers {
    fn drop(&mut self) {
        self.0.close_producers();
    }
}

/// The queue as the worker holds it: when the worker ends, however it ends, requests are
/// refused instead of waiting for a model that is gone.
struct Consumer(Arc<JobQueue<Job>>);

impl Drop for Consumer {
    fn drop(&mut self) {
        self.0.close_consumer();
    }
}

/// The worker thread, joined at shutdown.
pub struct Worker(JoinHandle<()>);

impl Worker {
    /// Waits for the worker to finish; it does once every [`Batcher`] is dropped.
    pub fn join(self) {
        let _ = self.0.join();
    }

    /// Whether the worker has ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Batcher {
    /// Starts the worker and waits until the model is on its device and has run once. `stats`
    /// counts what this model version does.
    pub fn start(
        loaded: LoadedModel,
        device: Device,
        config: BatchConfig,
        metrics: Arc<Metrics>,
        stats: Arc<ModelStats>,
    ) -> Result<(Self, Worker)> {
        let queue = Arc::new(JobQueue::new(config.max_queue, config.max_batch));
        let jobs = Consumer(Arc::clone(&queue));
        let ready = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let worker_ready = Arc::clone(&ready);
        let worker_metrics = Arc::clone(&metrics);
        let handle = std::thread::Builder::new()
            .name("maas-model".into())
            .spawn(move || {
                let (classifier, explainer) = match place(&loaded, &device) {
                    Ok(placed) => placed,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                drop(loaded);
                let _ready = ReadyWhileAlive::new(worker_ready);
                let _ = started_tx.send(Ok(()));
                let model = Model {
                    classifier: &classifier,
                    explainer: &explainer,
                    stats: &stats,
                };
                work(&model, &jobs.0, config, &worker_metrics);
            })
            .context("cannot start the model thread")?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok((
                Self {
                    queue: Arc::new(Producers(queue)),
                    ready,
                    metrics,
                },
                Worker(handle),
            )),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => {
                let _ = handle.join();
                Err(anyhow!("the model thread stopped while loading the model"))
            }
        }
    }

    /// Whether the model is loaded and its worker is running.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Queues `rows` preprocessed inputs and waits, until `deadline`, for the answer.
    pub async fn run(
        &self,
        inputs: Vec<f32>,
        rows: usize,
        want: Want,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, ApiError> {
        if !self.is_ready() {
            return Err(ApiError::unavailable("the model is not ready"));
        }
        let (reply, answer) = oneshot::channel();
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            inputs,
            rows,
            want,
            reply,
            queued: Instant::now(),
        };
        let in_progress = self.metrics.in_progress.load(Ordering::Relaxed);
        if let Err((refused, _)) = self.queue.0.push(job, rows, in_progress) {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(match refused {
                Refused::Full => ApiError::unavailable(
                    "the server is busy: the request queue is full; retry later",
                ),
                Refused::Closed => ApiError::unavailable("the model is not running"),
            });
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(ApiError::unavailable(
                "timed out waiting for the model; retry later",
            )),
            Ok(Err(_)) => Err(ApiError::internal("the model stopped before answering")),
            Ok(Ok(Err(message))) => Err(ApiError::internal(message)),
            Ok(Ok(Ok(answer))) => Ok(answer),
        }
    }

    /// [`run`](Self::run) for the probabilities, `rows * classes` values, row-major.
    pub async fn probabilities(
        &self,
        inputs: Vec<f32>,
        rows: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<f32>, ApiError> {
        match self
            .run(inputs, rows, Want::Probabilities, deadline)
            .await?
        {
            Answer::Probabilities(p) => Ok(p),
            _ => Err(wrong_kind()),
        }
    }
}

/// A model thread's answer that is not what the request asked for: a fault of the server.
pub fn wrong_kind() -> ApiError {
    ApiError::internal("the model answered with the wrong kind of result")
}

/// Clears the ready flag when the worker ends, however it ends, so health checks see it.
struct ReadyWhileAlive(Arc<AtomicBool>);

impl ReadyWhileAlive {
    fn new(flag: Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        Self(flag)
    }
}

impl Drop for ReadyWhileAlive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Puts the model on the device and runs it once, so that the first request does not pay for
/// kernel compilation and is not the one to discover a broken device. The explainer (the same
/// weights with autodiff, for `/v1/explain`) lives on the same thread.
fn place(loaded: &LoadedModel, device: &Device) -> Result<(Classifier, Explainer)> {
    catch_unwind(AssertUnwindSafe(|| {
        let classifier = Classifier::new(loaded, device);
        let explainer = Explainer::new(loaded, device);
        classifier
            .probabilities(&vec![0.0; INPUT_LEN])
            .map(|_| (classifier, explainer))
    }))
    .map_err(|_| anyhow!("the model could not be placed on the device (the backend panicked)"))?
    .context("the model failed its first run")
}

/// What the worker runs batches on.
struct Model<'a> {
    classifier: &'a Classifier,
    explainer: &'a Explainer,
    stats: &'a ModelStats,
}

fn work(model: &Model, jobs: &JobQueue<Job>, config: BatchConfig, metrics: &Metrics) {
    let in_progress = || metrics.in_progress.load(Ordering::Relaxed);
    while let Some(batch) = jobs.next_batch(config.max_wait, in_progress) {
        metrics
            .queue_depth
            .fetch_sub(batch.len(), Ordering::Relaxed);
        let batch = batch.into_iter().map(|(job, _)| job).collect();
        run_batch(model, batch, metrics);
    }
}

fn run_batch(model: &Model, batch: Vec<Job>, metrics: &Metrics) {
    let Model {
        classifier,
        explainer,
        stats,
    } = *model;
    // A request whose client gave up (timeout, disconnect) is not worth computing.
    let mut batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let started = Instant::now();
    for job in &batch {
        stats
            .queue
            .add(started.saturating_duration_since(job.queued));
    }
    let rows: usize = batch.iter().map(|j| j.rows).sum();
    metrics.observe_batch(rows);
    stats.execution(rows);
    // The batch's inputs, moved rather than copied where they can be: only an explanation still
    // needs its image after the pass, so only its job keeps it.
    let keeps = |job: &Job| matches!(job.want, Want::Explanation { .. });
    let inputs = match batch.as_mut_slice() {
        [job] if !keeps(job) => std::mem::take(&mut job.inputs),
        jobs => {
            let mut all = Vec::with_capacity(rows * INPUT_LEN);
            for job in jobs {
                all.extend_from_slice(&job.inputs);
                if !keeps(job) {
                    job.inputs = Vec::new();
                }
            }
            all
        }
    };
    let classes = classifier.num_classes();
    let outcome = catch_unwind(AssertUnwindSafe(|| classifier.probabilities_of(inputs)));
    // Every request of the batch waited for the whole pass, as Triton counts it.
    let took = started.elapsed();
    stats
        .compute_infer
        .add_many(batch.len() as u64, took * batch.len() as u32);
    let probabilities = match outcome {
        Ok(Ok(p)) if p.len() == rows * classes => p,
        Ok(Ok(p)) => {
            return fail(
                batch,
                &format!("the model gave {} values for {rows} images", p.len()),
            );
        }
        Ok(Err(e)) => return fail(batch, &format!("the model failed: {e:#}")),
        Err(_) => return fail(batch, "the model failed (the backend panicked)"),
    };
    let mut rest = probabilities.as_slice();
    for job in batch {
        let (mine, after) = rest.split_at(job.rows * classes);
        rest = after;
        let input = &job.inputs;
        let answer = match job.want {
            Want::Probabilities => Ok(Answer::Probabilities(mine.to_vec())),
            Want::Prediction { file, top_k } => {
                Ok(Answer::Prediction(classifier.prediction(file, mine, top_k)))
            }
            Want::Explanation { file, top_k } => {
                explanation(explainer, classifier.prediction(file, mine, top_k), input)
            }
        };
        let _ = job.reply.send(answer);
    }
}

/// The gradient x input picture of one image's predicted class. One backward pass per image,
/// outside the batch: explaining is rarer and dearer than predicting.
fn explanation(
    explainer: &Explainer,
    prediction: Prediction,
    input: &[f32],
) -> Result<Answer, String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        explainer
            .gradient_x_input(input, prediction.index)
            .and_then(|evidence| picture_png(input, &evidence))
    }));
    match outcome {
        Ok(Ok(picture_png)) => Ok(Answer::Explanation {
            prediction,
            picture_png,
        }),
        Ok(Err(e)) => Err(format!("explaining failed: {e:#}")),
        Err(_) => Err("explaining failed (the backend panicked)".into()),
    }
}

fn fail(batch: Vec<Job>, message: &str) {
    for job in batch {
        let _ = job.reply.send(Err(message.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, Weights};

    fn model() -> LoadedModel {
        let classes = (0..10).map(|i| format!("c{i}")).collect();
        LoadedModel {
            config: ModelConfig::new(8, classes),
            weights: Weights::init(8, 10, 3),
            provenance: None,
            train: None,
            path: "test.maas".into(),
        }
    }

    fn start(config: BatchConfig) -> (Batcher, Worker, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let (b, w) = Batcher::start(
            model(),
            crate::device::Selected::cpu().device,
            config,
            Arc::clone(&metrics),
            Arc::default(),
        )
        .unwrap();
        (b, w, metrics)
    }

    fn input(seed: usize) -> Vec<f32> {
        (0..INPUT_LEN)
            .map(|i| ((i * 31 + seed * 7) % 255) as f32 / 255.0)
            .collect()
    }

    fn deadline() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_a_pass_and_get_their_own_rows() {
        let (batcher, worker, metrics) = start(BatchConfig {
            max_batch: 64,
            max_wait: Duration::from_millis(200),
            max_queue: 64,
        });
        assert!(batcher.is_ready());
        // As the routes would count them: eight requests in progress, so the worker waits for all.
        metrics.in_progress.store(8, Ordering::Relaxed);
        let alone = Classifier::new(&model(), &crate::device::Selected::cpu().device);
        let mut tasks = Vec::new();
        for seed in 0..8 {
            let b = batcher.clone();
            tasks.push(tokio::spawn(async move {
                b.run(input(seed), 1, Want::Probabilities, deadline()).await
            }));
        }
        for (seed, task) in tasks.into_iter().enumerate() {
            let Answer::Probabilities(p) = task.await.unwrap().unwrap() else {
                panic!("wrong answer kind")
            };
            let expected = alone.probabilities(&input(seed)).unwrap();
            for (a, b) in p.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-6, "request {seed}: {a} vs {b}");
            }
        }
        // Eight requests within 200 ms: far fewer passes than requests.
        let text = metrics.render();
        let passes: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("maas_batch_size_count "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(passes < 8.0, "{passes} passes for 8 requests");
        drop(batcher);
        worker.join();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_refused_at_once() {
        // No worker drains this queue of one, so the second request finds it full.
        let queue = Arc::new(JobQueue::new(1, 64));
        let metrics = Arc::new(Metrics::new());
        let batcher = Batcher {
            queue: Arc::new(Producers(queue)),
            ready: Arc::new(AtomicBool::new(true)),
            metrics: Arc::clone(&metrics),
        };
        let waiting = batcher.clone();
        let first = tokio::spawn(async move {
            waiting
                .run(input(0), 1, Want::Probabilities, deadline())
                .await
        });
        while metrics.queue_depth.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = std::time::Instant::now();
        let err = batcher
            .run(input(1), 1, Want::Probabilities, deadline())
            .await
            .unwrap_err();
        assert_eq!(err.status.as_u16(), 503, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refusal was not immediate"
        );
        assert_eq!(metrics.queue_depth.load(Ordering::Relaxed), 1);
        first.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn predictions_carry_labels_and_a_late_answer_times_out() {
        let (batcher, worker, metrics) = start(BatchConfig {
            max_batch: 8,
            max_wait: Duration::from_millis(300),
            max_queue: 8,
        });
        let want = Want::Prediction {
            file: "x.png".into(),
            top_k: 3,
        };
        let Answer::Prediction(p) = batcher.run(input(1), 1, want, deadline()).await.unwrap()
        else {
            panic!()
        };
        assert_eq!((p.file.as_str(), p.top_k.len()), ("x.png", 3));
        assert!(p.label.starts_with('c'));
        // Another request in progress makes the worker wait max_wait for it, past this deadline.
        metrics.in_progress.store(2, Ordering::Relaxed);
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        let err = batcher
            .run(input(2), 1, Want::Probabilities, soon)
            .await
            .unwrap_err();
        assert_eq!(err.status.as_u16(), 503);
        drop(batcher);
        worker.join();
    }
}
