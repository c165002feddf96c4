//! Load a model with the maas library and classify one image.
//!
//! ```text
//! cargo run --example classify -- model.maas cat.png
//! ```

use std::path::PathBuf;

use maas::artifact::export::load_model;
use maas::data::preprocess::load_image_file;
use maas::device::{DeviceChoice, select};
use maas::infer::predict::Classifier;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(image)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: classify MODEL IMAGE");
    };
    let loaded = load_model(&PathBuf::from(model))?;
    let device = select(DeviceChoice::Cpu)?;
    let classifier = Classifier::new(&loaded, &device.device);
    let input = load_image_file(&PathBuf::from(&image))?;
    let probabilities = classifier.probabilities(&input)?;
    for ranked in classifier.rank(&probabilities, 3) {
        println!("{:<12} {:.3}", ranked.label, ranked.probability);
    }
    Ok(())
}
