//! Bytes as a model file or checkpoint: the container decoder, then the model and checkpoint
//! decoders behind `predict`, `serve`, `export` and `train --resume`.
//!
//! Random mutations almost never keep the trailing CRC-32 valid, which would stop the fuzzer at
//! the checksum; so every input is decoded twice, as it is and with its checksum made right, to
//! reach the header and array decoding behind it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use maas::artifact::checkpoint::Checkpoint;
use maas::artifact::container;
use maas::artifact::export::decode_model;

fn decode_all(bytes: &[u8]) {
    if let Ok(contents) = container::decode(bytes) {
        for array in &contents.arrays {
            assert_eq!(array.shape.iter().product::<usize>(), array.values.len());
        }
    }
    if let Ok(model) = decode_model(bytes, Path::new("fuzz.maas")) {
        let expected = model.config.parameter_shapes().unwrap();
        assert_eq!(model.weights.arrays.len(), expected.len());
        for (array, (name, shape)) in model.weights.arrays.iter().zip(expected) {
            assert_eq!((&array.name, &array.shape), (&name, &shape));
            assert_eq!(array.values.len(), shape.iter().product::<usize>());
        }
    }
    let _ = Checkpoint::decode(bytes);
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let body = fixed.len() - 4;
        let crc = crc32fast::hash(&fixed[..body]);
        fixed[body..].copy_from_slice(&crc.to_le_bytes());
        decode_all(&fixed);
    }
});
