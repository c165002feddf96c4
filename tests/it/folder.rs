//! Training on your own images: a folder of class folders (PNG and JPEG, mixed sizes), trained,
//! exported, then predicted, evaluated and explained with the folder's class names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::collections::BTreeMap;

use common::{Workspace, write_class_folder};
use maas::artifact::export::load_model;

/// Sorted, so that the class index is the palette colour's.
const CLASSES: [&str; 3] = ["cherry", "lime", "sky"];

fn workspace() -> Workspace {
    // A CIFAR-10 set is there too: an image folder is used instead, not beside it.
    Workspace::new(1, 1)
}

fn train_args<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        data,
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--lr",
        "0.005",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_folder_with_train_and_test_is_learnt_and_answers_with_its_class_names() {
    let ws = workspace();
    write_class_folder(&ws.path("photos/train"), &CLASSES, 24, 1);
    write_class_folder(&ws.path("photos/test"), &CLASSES, 8, 2);
    // One corrupt image among the training images: skipped, counted, named.
    std::fs::write(ws.path("photos/train/lime/broken.png"), b"not a png at all").unwrap();

    let (code, out, err) = ws.run(&train_args("photos", &["--json"]));
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        err.contains("image folder photos: 3 classes, 73 training and 24 test image files"),
        "{err}"
    );
    // The count of each class, train and test.
    for class in ["cherry", "sky"] {
        assert!(
            err.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [class, "24", "8"]),
            "{err}"
        );
    }
    assert!(
        err.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["lime", "25", "8"]),
        "{err}"
    );
    assert!(
        err.contains("skipped 1 unreadable image of 73") && err.contains("broken.png"),
        "{err}"
    );
    assert!(
        summary["final_test_accuracy"].as_f64().unwrap() > 0.9,
        "{summary}"
    );
    ws.ok(&["export"]);
    let model = load_model(&ws.path("model.maas")).unwrap();
    assert_eq!(model.config.classes, CLASSES);
    assert_eq!(model.weights.classes(), 3);

    // predict answers with the folder's names; eval's figures are those of predict --json.
    let predicted: serde_json::Value =
        serde_json::from_str(&ws.ok(&["predict", "--json", "--top-k", "5", "photos/test"]))
            .unwrap();
    let predictions = predicted["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 24);
    let mut confusion = vec![vec![0u64; 3]; 3];
    for p in predictions {
        // --top-k 5 lists the three classes there are.
        assert_eq!(p["top_k"].as_array().unwrap().len(), 3);
        let file = p["file"].as_str().unwrap();
        let truth = CLASSES
            .iter()
            .position(|c| file.contains(&format!("/{c}/")))
            .unwrap();
        let label = p["label"].as_str().unwrap();
        let predicted = CLASSES.iter().position(|c| *c == label).unwrap();
        assert_eq!(p["index"], predicted);
        confusion[truth][predicted] += 1;
    }
    let report: serde_json::Value =
        serde_json::from_str(&ws.ok(&["eval", "--data", "photos", "--json"])).unwrap();
    assert_eq!(report["labels"], serde_json::json!(CLASSES));
    assert_eq!(report["samples"], 24);
    let eval_confusion: Vec<Vec<u64>> =
        serde_json::from_value(report["confusion"].clone()).unwrap();
    assert_eq!(eval_confusion, confusion);
    assert_eq!(eval_confusion.iter().flatten().sum::<u64>(), 24);
    let correct: u64 = (0..3).map(|i| confusion[i][i]).sum();
    assert!((report["accuracy"].as_f64().unwrap() - correct as f64 / 24.0).abs() < 1e-12);
    assert!(ws.path("confusion.png").is_file());

    // explain names the class too.
    let explained: serde_json::Value =
        serde_json::from_str(&ws.ok(&["explain", "--json", "photos/test/sky/sky-000.png"]))
            .unwrap();
    assert_eq!(explained["explanations"][0]["label"], "sky");

    // --strict refuses the corrupt image, naming it.
    let (code, _, err) = ws.run(&train_args("photos", &["--strict", "--overwrite"]));
    assert_eq!(code, 1, "{err}");
    let line = err.lines().find(|l| l.starts_with("maas: error")).unwrap();
    assert!(
        line.contains("photos/train/lime/broken.png") && line.contains("--strict"),
        "{err}"
    );
}

#[test]
fn one_folder_of_classes_is_divided_by_val_split_with_the_seed() {
    let ws = workspace();
    write_class_folder(&ws.path("mine"), &CLASSES, 20, 3);
    let (code, _, err) = ws.run(&train_args(
        "mine",
        &["--test-split", "0.25", "--seed", "5"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("45 training and 15 test image files (test images: 25% of each class, drawn with seed 5)"),
        "{err}"
    );
    // eval holds out the same images: the model remembers the seed and the share.
    let report: serde_json::Value =
        serde_json::from_str(&ws.ok(&["eval", "--data", "mine", "--json"])).unwrap();
    assert_eq!(report["samples"], 15);
    let support: Vec<u64> = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["support"].as_u64().unwrap())
        .collect();
    assert_eq!(support, [5, 5, 5]);
    assert!(report["accuracy"].as_f64().unwrap() > 0.9, "{report}");
    // Per class, the images the model was tested on.
    let mut seen = BTreeMap::new();
    for l in err
        .lines()
        .filter(|l| CLASSES.iter().any(|c| l.trim_start().starts_with(c)))
    {
        let cols: Vec<&str> = l.split_whitespace().collect();
        seen.insert(
            cols[0].to_string(),
            (cols[1].to_string(), cols[2].to_string()),
        );
    }
    assert_eq!(seen.len(), 3, "{err}");
    assert!(
        seen.values()
            .all(|v| v == &("15".to_string(), "5".to_string()))
    );
    // Resuming with another share is refused.
    let (code, _, err) = ws.run(&[
        "train",
        "--data",
        "mine",
        "--resume",
        "--epochs",
        "5",
        "--test-split",
        "0.5",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--test-split 0.25, not 0.5"), "{err}");
}

#[test]
fn folder_problems_are_one_clear_error() {
    let ws = workspace();
    write_class_folder(&ws.path("one"), &CLASSES[..1], 3, 1);
    let (code, _, err) = ws.run(&["train", "--data", "one"]);
    assert_eq!(code, 1);
    assert!(err.contains("found 1 class folder"), "{err}");
    std::fs::create_dir_all(ws.path("one/empty")).unwrap();
    let (code, _, err) = ws.run(&["train", "--data", "one"]);
    assert_eq!(code, 1);
    assert!(err.contains("one/empty: no image files"), "{err}");
    // --test-split means nothing for CIFAR-10.
    let (code, _, err) = ws.run(&["train", "--test-split", "0.2"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--test-split applies to an image folder"),
        "{err}"
    );
    // A model of other classes is not evaluated on this folder.
    write_class_folder(&ws.path("two"), &CLASSES[1..], 6, 1);
    ws.ok(&["train", "--data", "two", "--epochs", "1"]);
    let (code, _, err) = ws.run(&["eval", "--data", "data"]);
    assert_eq!(code, 1);
    assert!(err.contains("are not the dataset's"), "{err}");
}

#[test]
fn a_photo_gives_training_and_eval_exactly_the_values_predict_gives() {
    // A 600x400 JPEG takes the DCT-scaled decode; training and eval on a folder read it through
    // `load_files` (bytes, normalised when a batch is drawn), predict through `load_image_file`.
    let ws = workspace();
    let mut photo = image::RgbImage::new(600, 400);
    for (x, y, p) in photo.enumerate_pixels_mut() {
        *p = image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8]);
    }
    let path = ws.path("photo.jpg");
    photo.save(&path).unwrap();
    let (images, errors) =
        maas::data::folder::load_files(&[(path.clone(), 0)], &indicatif::ProgressBar::hidden());
    assert!(errors.is_empty());
    let mut training = Vec::new();
    maas::data::preprocess::normalize(images.image(0), &mut training);
    let predicting = maas::data::preprocess::load_image_file(&path).unwrap();
    assert_eq!(training, predicting);
}
