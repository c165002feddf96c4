//! Bytes as a `POST /v2/models/NAME/infer` request: the JSON body or, with the
//! `Inference-Header-Content-Length` header, the binary tensor data extension, decoded by the
//! route's own functions down to model input values (BYTES inputs go on through the image
//! preprocessing). Any input must give values or a 400 message, never a panic.
//!
//! The first byte chooses the header: 0, none (the body follows); 1, the decimal length given
//! by the next two bytes (little-endian), then the body; otherwise the raw header value, up to
//! the first newline, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maas::data::preprocess::INPUT_LEN;
use maas::serve::decode_infer_request;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let length;
    let (header, body): (Option<&[u8]>, &[u8]) = match mode {
        0 => (None, rest),
        1 => {
            let Some((len, body)) = rest.split_first_chunk::<2>() else {
                return;
            };
            length = u16::from_le_bytes(*len).to_string();
            (Some(length.as_bytes()), body)
        }
        _ => match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (Some(&rest[..end]), &rest[end + 1..]),
            None => (Some(rest), &[][..]),
        },
    };
    if let Ok((values, rows)) = decode_infer_request(body, header) {
        assert!(rows >= 1);
        assert_eq!(values.len(), rows * INPUT_LEN);
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
