//! A walk over a request's protobuf bytes before prost decodes them, counting the entries of its
//! repeated fields.
//!
//! An entry can take 2 bytes on the wire and hundreds once decoded (an empty `inputs` entry is a
//! whole `InferInputTensor`): 16 MB of them decoded into 2.45 GB. Counting is cheap (no
//! allocation, it stops at the limit), so a message with more than [`MAX_ENTRIES`] entries is
//! refused before anything is allocated for it, and what a message decodes into stays within a
//! small multiple of its size. Fields whose entries decode into no more than their wire bytes
//! (packed floats, strings, singular fields) are not counted.

/// Most entries of repeated fields in one request, all fields together: far more than any real
/// request holds (one input, one output, a few parameters, one image per entry of
/// `bytes_contents`), and at most a few megabytes decoded.
pub const MAX_ENTRIES: usize = 65_536;

/// Which fields of a message count, as far as decoding memory goes.
pub struct Schema {
    /// `(field number, name in messages, kind)`.
    pub fields: &'static [(u64, &'static str, Field)],
    /// Whether every other field's occurrences count too: for the messages with no repeated
    /// fields of their own, where a real request has a handful of fields.
    pub count_others: bool,
}

/// How a listed field counts.
pub enum Field {
    /// Messages (repeated, map entries, or a singular one sent many times): each counts, and
    /// their own fields are walked with the schema.
    Messages(&'static Schema),
    /// Repeated strings or bytes: each counts.
    Strings,
    /// Repeated integers, packed or not: each number counts (a byte sent, 8 decoded).
    Varints,
}

/// Every field counts: the requests without repeated fields.
pub const FLAT: Schema = Schema {
    fields: &[],
    count_others: true,
};

/// A map entry or a message whose fields need no counting.
const LEAF: Schema = Schema {
    fields: &[],
    count_others: false,
};

const CONTENTS: Schema = Schema {
    fields: &[
        (2, "inputs.contents.int_contents", Field::Varints),
        (3, "inputs.contents.int64_contents", Field::Varints),
        (4, "inputs.contents.uint_contents", Field::Varints),
        (5, "inputs.contents.uint64_contents", Field::Varints),
        (8, "inputs.contents.bytes_contents", Field::Strings),
    ],
    count_others: false,
};

const INPUT: Schema = Schema {
    fields: &[
        (3, "inputs.shape", Field::Varints),
        (4, "inputs.parameters", Field::Messages(&LEAF)),
        (5, "inputs.contents", Field::Messages(&CONTENTS)),
    ],
    count_others: false,
};

const OUTPUT: Schema = Schema {
    fields: &[(2, "outputs.parameters", Field::Messages(&LEAF))],
    count_others: false,
};

/// `ModelInferRequest` (proto/grpc_predict_v2.proto).
pub const INFER_REQUEST: Schema = Schema {
    fields: &[
        (4, "parameters", Field::Messages(&LEAF)),
        (5, "inputs", Field::Messages(&INPUT)),
        (6, "outputs", Field::Messages(&OUTPUT)),
        (7, "raw_input_contents", Field::Strings),
    ],
    count_others: false,
};

/// Why a message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not protobuf: the message is cut short or uses a wire type proto3 has not.
    Malformed(&'static str),
    /// More than [`MAX_ENTRIES`] entries; the field where the count ran over.
    TooMany(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "the message is not valid protobuf: {why}"),
            Self::TooMany(field) => write!(
                f,
                "the message has more than {MAX_ENTRIES} entries in its repeated fields \
                 (counted up to `{field}`); send one input and one output"
            ),
        }
    }
}

/// Checks `message` against `schema`: well-formed, and within [`MAX_ENTRIES`].
pub fn check(message: &[u8], schema: &Schema) -> Result<(), WireError> {
    let mut left = MAX_ENTRIES;
    walk(message, schema, &mut left)
}

fn walk(mut bytes: &[u8], schema: &Schema, left: &mut usize) -> Result<(), WireError> {
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let (number, wire_type) = (key >> 3, key & 7);
        let packed = match wire_type {
            0 => {
                varint(&mut bytes)?;
                None
            }
            1 => {
                take(&mut bytes, 8)?;
                None
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?)
                    .map_err(|_| WireError::Malformed("a length beyond memory"))?;
                Some(take(&mut bytes, len)?)
            }
            5 => {
                take(&mut bytes, 4)?;
                None
            }
            _ => return Err(WireError::Malformed("a wire type proto3 does not use")),
        };
        let listed = schema.fields.iter().find(|(n, _, _)| *n == number);
        let (name, count) = match (listed, packed) {
            (Some((_, name, Field::Messages(inner))), Some(body)) => {
                spend(left, 1, name)?;
                walk(body, inner, left)?;
                continue;
            }
            // Each number of a packed run ends with a byte below 0x80.
            (Some((_, name, Field::Varints)), Some(run)) => {
                (*name, run.iter().filter(|&&b| b < 0x80).count())
            }
            (Some((_, name, _)), _) => (*name, 1),
            (None, _) if schema.count_others => ("fields", 1),
            (None, _) => continue,
        };
        spend(left, count, name)?;
    }
    Ok(())
}

fn spend(left: &mut usize, count: usize, field: &'static str) -> Result<(), WireError> {
    *left = left.checked_sub(count).ok_or(WireError::TooMany(field))?;
    Ok(())
}

fn varint(bytes: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or(WireError::Malformed("cut short inside a number"))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(WireError::Malformed("a number longer than 10 bytes"))
}

fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Result<&'a [u8], WireError> {
    if bytes.len() < len {
        return Err(WireError::Malformed("cut short inside a field"));
    }
    let (value, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::grpc::pb;
    use prost::Message;

    #[test]
    fn real_requests_pass_and_empty_entry_floods_are_refused() {
        let input = pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "BYTES".into(),
            shape: vec![3],
            contents: Some(pb::InferTensorContents {
                bytes_contents: vec![b"png".to_vec(); 3],
                fp32_contents: vec![0.5; 100_000],
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = pb::ModelInferRequest {
            model_name: "cifar".into(),
            inputs: vec![input],
            raw_input_contents: vec![vec![0; 1000]],
            ..Default::default()
        };
        assert_eq!(check(&request.encode_to_vec(), &INFER_REQUEST), Ok(()));

        // 2 bytes each: field 5 (inputs) with an empty message, and so on.
        let flood = |entry: &[u8], n: usize| entry.repeat(n);
        let inputs = flood(&[0x2a, 0], MAX_ENTRIES + 1);
        assert_eq!(
            check(&inputs, &INFER_REQUEST),
            Err(WireError::TooMany("inputs"))
        );
        assert_eq!(check(&inputs[..2 * MAX_ENTRIES], &INFER_REQUEST), Ok(()));
        let outputs = flood(&[0x32, 0], MAX_ENTRIES + 1);
        assert_eq!(
            check(&outputs, &INFER_REQUEST),
            Err(WireError::TooMany("outputs"))
        );
        // Entries inside entries count together: 300 inputs of 300 parameters each.
        let parameters = flood(&[0x22, 0], 300);
        let mut input = vec![0x2a, 0x80 | (600 & 0x7f) as u8, (600 >> 7) as u8];
        input.extend_from_slice(&parameters);
        assert_eq!(
            check(&input.repeat(300), &INFER_REQUEST),
            Err(WireError::TooMany("inputs.parameters"))
        );
        // A packed run of shape dimensions counts each number.
        let mut shape = vec![0x2a, 0x84, 0x80, 0x08, 0x1a, 0x80, 0x80, 0x08];
        shape.extend(std::iter::repeat_n(1u8, 1 << 17));
        assert_eq!(
            check(&shape, &INFER_REQUEST),
            Err(WireError::TooMany("inputs.shape"))
        );
        // Requests without repeated fields: any field sent over and over.
        let names = flood(&[0x0a, 0], MAX_ENTRIES + 1);
        assert_eq!(check(&names, &FLAT), Err(WireError::TooMany("fields")));
        assert_eq!(check(&names, &INFER_REQUEST), Ok(()));
    }

    #[test]
    fn broken_messages_are_refused_without_panicking() {
        for broken in [
            &[0x2a, 5, 0][..],
            &[0x08],
            &[0x0b],
            &[0xff; 11],
            &[0x2a, 0xff],
        ] {
            assert!(
                matches!(check(broken, &INFER_REQUEST), Err(WireError::Malformed(_))),
                "{broken:?}"
            );
        }
    }
}
