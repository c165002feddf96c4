//! Bytes as an uploaded image: the one preprocessing that `predict`, `explain` and `serve` (BYTES
//! inputs and `/v1/predict`) apply. Any input must give an error or a valid model input, never a
//! panic, an abort for memory, or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maas::data::preprocess::{INPUT_LEN, image_bytes_to_input};

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = image_bytes_to_input(data) {
        assert_eq!(values.len(), INPUT_LEN);
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
