//! How good is the model: accuracy, top-3 accuracy, loss, per-class precision / recall / F1 and
//! the confusion matrix on a labelled split.

use anyhow::{Result, bail};
use serde::Serialize;

use crate::data::LabelledImages;
use crate::data::cifar10::IMAGE_BYTES;
use crate::data::preprocess::normalize;
use crate::infer::predict::{Probabilities, rank};

/// One class's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// Class name.
    pub label: String,
    /// Of the images predicted as this class, the share that are.
    pub precision: f64,
    /// Of the images of this class, the share predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Images of this class.
    pub support: u64,
}

/// What `maas eval` reports, and `eval --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// The model file.
    pub model: String,
    /// Images evaluated.
    pub samples: usize,
    /// Share of images whose most probable class is right.
    pub accuracy: f64,
    /// Share of images whose class is among the three most probable.
    pub top3_accuracy: f64,
    /// Mean cross-entropy.
    pub mean_loss: f64,
    /// Per-class figures, in class order.
    pub classes: Vec<ClassMetrics>,
    /// Class names, the order of the confusion matrix's rows and columns.
    pub labels: Vec<String>,
    /// `confusion[true][predicted]` image counts.
    pub confusion: Vec<Vec<u64>>,
}

/// What `eval --json` prints: the report and where its picture went.
#[derive(Debug, Serialize)]
pub struct EvalOutput<'a> {
    /// The figures.
    #[serde(flatten)]
    pub report: &'a EvalReport,
    /// The confusion matrix as a picture (`confusion.png`).
    pub confusion_png: &'a std::path::Path,
}

/// Images per forward pass.
const CHUNK: usize = 1000;

/// Evaluates `classifier` (a model here or behind a URL) on `split`.
pub fn evaluate(
    classifier: &dyn Probabilities,
    split: &LabelledImages,
    model: &str,
) -> Result<EvalReport> {
    if split.is_empty() {
        bail!("no images to evaluate");
    }
    let labels = classifier.classes().to_vec();
    let n_classes = labels.len();
    let mut confusion = vec![vec![0u64; n_classes]; n_classes];
    let (mut top3, mut loss) = (0usize, 0f64);
    let mut inputs = Vec::new();
    for start in (0..split.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(split.len());
        inputs.clear();
        normalize(
            &split.images[start * IMAGE_BYTES..end * IMAGE_BYTES],
            &mut inputs,
        );
        let probabilities = classifier.probabilities(&inputs)?;
        for (row, &truth) in probabilities
            .chunks(n_classes)
            .zip(&split.labels[start..end])
        {
            let truth = usize::from(truth);
            if truth >= n_classes {
                bail!("label {truth} is beyond the model's {n_classes} classes");
            }
            let ranked = rank(&labels, row, 3);
            let predicted = ranked.first().map_or(0, |r| r.index);
            confusion[truth][predicted] += 1;
            top3 += usize::from(ranked.iter().any(|r| r.index == truth));
            loss -= f64::from(row[truth].max(1e-12)).ln();
        }
    }
    let n = split.len();
    let correct: u64 = (0..n_classes).map(|i| confusion[i][i]).sum();
    let classes = (0..n_classes)
        .map(|k| {
            let tp = confusion[k][k] as f64;
            let predicted: u64 = confusion.iter().map(|row| row[k]).sum();
            let support: u64 = confusion[k].iter().sum();
            let ratio = |a: f64, b: u64| if b == 0 { 0.0 } else { a / b as f64 };
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassMetrics {
                label: labels.get(k).cloned().unwrap_or_default(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    Ok(EvalReport {
        model: model.to_string(),
        samples: n,
        accuracy: correct as f64 / n as f64,
        top3_accuracy: top3 as f64 / n as f64,
        mean_loss: loss / n as f64,
        classes,
        labels,
        confusion,
    })
}

/// The report as tables for people; class names escaped ([`crate::terminal::escape`]), as a
/// control character in one would break its row or act on the terminal.
pub fn render(report: &EvalReport) -> String {
    use crate::terminal::escape;
    let mut out = format!(
        "{} images, model {}\naccuracy {:.4}   top-3 accuracy {:.4}   mean loss {:.4}\n\n",
        report.samples,
        escape(&report.model),
        report.accuracy,
        report.top3_accuracy,
        report.mean_loss
    );
    let labels: Vec<_> = report.labels.iter().map(|l| escape(l)).collect();
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    out.push_str(&format!(
        "{:<width$}  PRECISION  RECALL      F1  SUPPORT\n",
        "CLASS"
    ));
    for c in &report.classes {
        out.push_str(&format!(
            "{:<width$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n",
            escape(&c.label),
            c.precision,
            c.recall,
            c.f1,
            c.support
        ));
    }
    out.push_str("\nconfusion matrix (rows: true class, columns: predicted class)\n");
    let short: Vec<String> = labels.iter().map(|l| l.chars().take(6).collect()).collect();
    out.push_str(&format!("{:<width$}", ""));
    for s in &short {
        out.push_str(&format!(" {s:>6}"));
    }
    out.push('\n');
    for (label, row) in labels.iter().zip(&report.confusion) {
        out.push_str(&format!("{label:<width$}"));
        for v in row {
            out.push_str(&format!(" {v:>6}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_escaped_in_the_tables() {
        let labels: Vec<String> = vec!["cat\u{1b}[2J".into(), "dog\nfish".into()];
        let class = |label: &String| ClassMetrics {
            label: label.clone(),
            precision: 1.0,
            recall: 1.0,
            f1: 1.0,
            support: 1,
        };
        let report = EvalReport {
            model: "m".into(),
            samples: 2,
            accuracy: 1.0,
            top3_accuracy: 1.0,
            mean_loss: 0.0,
            classes: labels.iter().map(class).collect(),
            labels: labels.clone(),
            confusion: vec![vec![1, 0], vec![0, 1]],
        };
        let text = render(&report);
        assert!(!text.contains('\u{1b}'), "{text}");
        // Two lines of figures, the matrix's header and two rows, as for plain names.
        assert_eq!(text.lines().count(), 11, "{text}");
        assert!(text.contains("dog\\nfish"), "{text}");
    }
}
