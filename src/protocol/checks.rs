//! The checks of an infer request, whatever carried it: the tensor's name, datatype, shape, size
//! and values, and the outputs asked for. REST and gRPC each read their wire format into the
//! neutral pieces here, and both answer a bad request with these words.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::names::{BYTES, FP32, INPUT_NAME, OUTPUT_NAME};
use super::tensor_data::FlatData;
use crate::data::preprocess::{INPUT_LEN, SIDE};

/// Most images in one request: an encoded image of a few bytes becomes 3072 floats, so without a
/// cap a small body could claim gigabytes.
pub const MAX_IMAGES: usize = 4096;

/// A request the protocol refuses, and why in one line: 400 over REST, `INVALID_ARGUMENT` over
/// gRPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Invalid {
    /// The refusal with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The input as sent: preprocessed values, or encoded images still to decode.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `rows` images of [`INPUT_LEN`] values.
    Fp32 { rows: usize, values: Vec<f32> },
    /// Encoded image files.
    Images(Vec<Vec<u8>>),
}

/// An output a request asks for, as its transport carries it.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestedOutput<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its `binary_data` parameter, when set (REST only).
    pub binary: Option<bool>,
    /// Whether it asks for the classification extension.
    pub classification: bool,
    /// Whether it asks for shared memory.
    pub shared_memory: bool,
}

/// Checks the outputs a request asks for and says whether the probabilities go back in binary:
/// per output, else `all_binary` (the request-wide flag). A Triton client asking for
/// classification or shared memory would read classes never computed or a region never written.
pub fn check_outputs<'a>(
    outputs: impl IntoIterator<Item = RequestedOutput<'a>>,
    all_binary: bool,
) -> Result<bool, Invalid> {
    let mut binary = all_binary;
    for output in outputs {
        if output.name != OUTPUT_NAME {
            return Err(Invalid::new(format!(
                "unknown output '{}'; this model's output is '{OUTPUT_NAME}'",
                output.name
            )));
        }
        if output.classification {
            return Err(Invalid::new(
                "the classification extension is not supported; read the probabilities",
            ));
        }
        if output.shared_memory {
            return Err(shared_memory());
        }
        binary = output.binary.unwrap_or(all_binary);
    }
    Ok(binary)
}

/// The one input of a request, given how many it has: exactly one is served.
pub fn one_input<T>(inputs: Vec<T>) -> Result<T, Invalid> {
    let count = inputs.len();
    <[T; 1]>::try_from(inputs)
        .map(|[input]| input)
        .map_err(|_| {
            Invalid::new(format!(
                "expected exactly one input ('{INPUT_NAME}'), got {count}"
            ))
        })
}

/// Shared memory asked for (by an input or an output): not supported.
pub fn shared_memory() -> Invalid {
    Invalid::new("shared memory is not supported")
}

/// An input with two sources of data; `what` names them as its transport does.
pub fn two_sources(what: &str) -> Invalid {
    Invalid::new(format!("input '{INPUT_NAME}' has both {what}"))
}

/// An input with no data; `what` names where it should be, as its transport does.
pub fn no_data(what: &str) -> Invalid {
    Invalid::new(format!("input '{INPUT_NAME}' has neither {what}"))
}

/// An input tensor's contents, as a REST or gRPC request carries them.
pub enum TensorData<'a> {
    /// Raw bytes: the binary extension's part, or gRPC's `raw_input_contents`; FP32 as
    /// little-endian floats, BYTES as elements each preceded by its 4-byte little-endian length.
    Raw(&'a [u8]),
    /// JSON `data`: numbers, or base64 strings for BYTES.
    Json(FlatData),
    /// gRPC's typed `fp32_contents`.
    Fp32(Vec<f32>),
    /// gRPC's typed `bytes_contents`: each element one encoded image.
    Bytes(Vec<Vec<u8>>),
}

/// Checks an input tensor (its name, datatype, shape and contents) whatever the transport: the
/// same rules and messages for REST and gRPC.
pub fn check_input(
    name: &str,
    datatype: &str,
    shape: &[i64],
    data: TensorData,
) -> Result<Input, Invalid> {
    check_name(name)?;
    match datatype {
        FP32 => {
            let rows = fp32_rows(shape)?;
            let values = match data {
                TensorData::Raw(raw) => fp32_from_bytes(raw, rows)?,
                TensorData::Json(json) => fp32_from_json(json, rows)?,
                TensorData::Fp32(values) => fp32_from_json(
                    FlatData {
                        numbers: values,
                        strings: Vec::new(),
                    },
                    rows,
                )?,
                TensorData::Bytes(_) => {
                    return Err(Invalid::new(format!(
                        "FP32 input '{INPUT_NAME}' holds bytes; send numbers"
                    )));
                }
            };
            // The model only ever saw pixel bytes / 255: anything else (NaN, 1e30, a client's own
            // mean/std normalisation) would get a confident but meaningless answer.
            if let Some(at) = values.iter().position(|v| !(0.0..=1.0).contains(v)) {
                return Err(Invalid::new(format!(
                    "input '{INPUT_NAME}' element {at} is {:?}; values must be in [0, 1] \
                     (pixel bytes / 255, channel-major RGB)",
                    values[at]
                )));
            }
            Ok(Input::Fp32 { rows, values })
        }
        BYTES => {
            let count = bytes_count(shape)?;
            let images = match data {
                TensorData::Raw(raw) => bytes_from_binary(raw, count)?,
                TensorData::Json(json) => bytes_from_json(json, count)?,
                TensorData::Bytes(images) if images.len() == count => images,
                TensorData::Bytes(images) => return Err(bytes_mismatch(images.len(), count)),
                TensorData::Fp32(_) => {
                    return Err(Invalid::new(format!(
                        "BYTES input '{INPUT_NAME}' holds numbers; send encoded images"
                    )));
                }
            };
            Ok(Input::Images(images))
        }
        other => Err(Invalid::new(format!(
            "input '{INPUT_NAME}' has datatype {other}; expected FP32 (shape [N,3,{SIDE},{SIDE}], values in [0, 1]) \
             or BYTES (encoded image files, shape [N])"
        ))),
    }
}

fn bytes_mismatch(got: usize, count: usize) -> Invalid {
    Invalid::new(format!(
        "BYTES input '{INPUT_NAME}' has {got} elements but its shape says {count}"
    ))
}

/// Checks that an input is the model's.
pub fn check_name(name: &str) -> Result<(), Invalid> {
    if name != INPUT_NAME {
        return Err(Invalid::new(format!(
            "unknown input '{name}'; this model's input is '{INPUT_NAME}'"
        )));
    }
    Ok(())
}

fn shape_text(shape: &[i64]) -> String {
    format!("{shape:?}").replace(' ', "")
}

fn check_rows(rows: i64, shape: &[i64]) -> Result<usize, Invalid> {
    match usize::try_from(rows) {
        Ok(n) if (1..=MAX_IMAGES).contains(&n) => Ok(n),
        _ => Err(Invalid::new(format!(
            "input '{INPUT_NAME}' has shape {}: the batch size must be 1 to {MAX_IMAGES}",
            shape_text(shape)
        ))),
    }
}

fn fp32_rows(shape: &[i64]) -> Result<usize, Invalid> {
    let side = i64::from(SIDE);
    match shape {
        [n, 3, h, w] if *h == side && *w == side => check_rows(*n, shape),
        _ => Err(Invalid::new(format!(
            "input '{INPUT_NAME}' has shape {}; expected [N,3,{SIDE},{SIDE}]",
            shape_text(shape)
        ))),
    }
}

fn bytes_count(shape: &[i64]) -> Result<usize, Invalid> {
    match shape {
        [n] | [n, 1] => check_rows(*n, shape),
        _ => Err(Invalid::new(format!(
            "BYTES input '{INPUT_NAME}' has shape {}; expected [N] (one encoded image per element)",
            shape_text(shape)
        ))),
    }
}

fn count_mismatch(what: &str, got: usize, rows: usize, expected: usize) -> Invalid {
    Invalid::new(format!(
        "input '{INPUT_NAME}' has {got} {what} but its shape [{rows},3,{SIDE},{SIDE}] needs {expected}"
    ))
}

fn fp32_from_bytes(raw: &[u8], rows: usize) -> Result<Vec<f32>, Invalid> {
    let expected = rows * INPUT_LEN * 4;
    if raw.len() != expected {
        return Err(count_mismatch(
            "bytes of FP32 data",
            raw.len(),
            rows,
            expected,
        ));
    }
    // The extension sends tensors in little-endian byte order, whatever the machines.
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn fp32_from_json(data: FlatData, rows: usize) -> Result<Vec<f32>, Invalid> {
    if !data.strings.is_empty() {
        return Err(Invalid::new(format!(
            "FP32 input '{INPUT_NAME}' holds strings; send numbers"
        )));
    }
    if data.numbers.len() != rows * INPUT_LEN {
        return Err(count_mismatch(
            "values",
            data.numbers.len(),
            rows,
            rows * INPUT_LEN,
        ));
    }
    Ok(data.numbers)
}

fn bytes_from_binary(mut raw: &[u8], count: usize) -> Result<Vec<Vec<u8>>, Invalid> {
    // Each element: its length as 4 little-endian bytes, then the bytes.
    let mut images = Vec::with_capacity(count);
    while !raw.is_empty() {
        let Some((len, rest)) = raw.split_first_chunk::<4>() else {
            return Err(Invalid::new(
                "BYTES data is cut inside an element's 4-byte length",
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(Invalid::new(format!(
                "BYTES element {} claims {len} bytes but only {} remain",
                images.len(),
                rest.len()
            )));
        }
        let (element, after) = rest.split_at(len);
        images.push(element.to_vec());
        raw = after;
        if images.len() > count {
            break;
        }
    }
    if images.len() != count {
        return Err(bytes_mismatch(images.len(), count));
    }
    Ok(images)
}

fn bytes_from_json(data: FlatData, count: usize) -> Result<Vec<Vec<u8>>, Invalid> {
    if !data.numbers.is_empty() {
        return Err(Invalid::new(format!(
            "BYTES input '{INPUT_NAME}' holds numbers; send base64 strings of encoded images"
        )));
    }
    if data.strings.len() != count {
        return Err(bytes_mismatch(data.strings.len(), count));
    }
    data.strings
        .iter()
        .enumerate()
        .map(|(i, text)| {
            decode_base64(&text.0).map_err(|e| {
                Invalid::new(format!(
                    "BYTES element {i}: base64: {e} (send images base64-encoded)"
                ))
            })
        })
        .collect()
}

/// Standard base64 (RFC 4648), the alphabet the protocol's JSON BYTES use, with or without
/// padding and with any final bits.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes a BYTES element sent as a JSON string. Clients differ, so the URL-safe alphabet and
/// line breaks (MIME wraps at 76) are accepted too: text that fails as it is is decoded again
/// with those mapped to the standard alphabet.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    BASE64.decode(text).or_else(|error| {
        let lenient = text
            .bytes()
            .any(|b| matches!(b, b'-' | b'_') || b.is_ascii_whitespace());
        if !lenient {
            return Err(error);
        }
        let standard: Vec<u8> = text
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| match b {
                b'-' => b'+',
                b'_' => b'/',
                b => b,
            })
            .collect();
        BASE64.decode(standard)
    })
}

/// Encodes `bytes` in standard base64, padded, as the protocol's JSON BYTES and
/// `/v1/explain`'s `picture_png` carry them.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors_both_alphabets_and_line_breaks() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                decode_base64(encoded).unwrap(),
                plain.as_bytes(),
                "{encoded}"
            );
            assert_eq!(encode_base64(plain.as_bytes()), encoded);
            let unpadded = encoded.trim_end_matches('=');
            assert_eq!(
                decode_base64(unpadded).unwrap(),
                plain.as_bytes(),
                "{unpadded}"
            );
        }
        // 0xfb 0xff 0xbf encodes to "+/+/" (standard) or "-_-_" (URL-safe).
        assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(decode_base64("-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(decode_base64("Zm9v\r\nYmFy\n").unwrap(), b"foobar");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_base64(&encode_base64(&all)).unwrap(), all);
        for bad in [
            "Zg=a", "Z", "Zm9vY", "Zm9v!", "Zg===", "Z===", "é", "Zm 9v!",
        ] {
            assert!(decode_base64(bad).is_err(), "{bad:?} decoded");
        }
    }
}
