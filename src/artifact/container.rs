//! The one on-disk format for model files and checkpoints: a signature, a format version, a JSON
//! header, the arrays as little-endian f32, and a CRC-32 of everything before it.
//!
//! ```text
//! "\x89MAAS\r\n\x1a" | u32 format version | u32 header length | header JSON | f32 data | u32 CRC-32
//! ```
//! The signature catches foreign files (and, like PNG's, text-mode mangling); the version lets an
//! old maas refuse a file from a newer one by name; the checksum catches truncation and bit rot.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::model::Array;

/// The first bytes of every maas file.
pub const SIGNATURE: &[u8; 8] = b"\x89MAAS\r\n\x1a";
/// The format version this maas writes and the newest it reads; older ones are brought up to it
/// as they are read (by [`super::migrate`], for the kinds that know their names). 2: arrays named by module path (was `w1`..`b2`).
pub const FORMAT_VERSION: u32 = 2;

const PREFIX_BYTES: usize = SIGNATURE.len() + 4 + 4;
const CRC_BYTES: usize = 4;

/// What a maas file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A deployable model (`maas export`).
    Model,
    /// A training checkpoint: a model plus the optimizer state to resume.
    Checkpoint,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Model => "model",
            Kind::Checkpoint => "checkpoint",
        })
    }
}

#[derive(Serialize, Deserialize)]
struct ArrayEntry {
    name: String,
    shape: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    kind: Kind,
    arrays: Vec<ArrayEntry>,
    meta: serde_json::Value,
}

/// A decoded maas file.
#[derive(Debug, Clone)]
pub struct Contents {
    /// The file's format version, as written: [`super::migrate`] brings older ones up to date.
    pub version: u32,
    /// What the file holds.
    pub kind: Kind,
    /// The kind-specific header (model configuration, provenance, training state).
    pub meta: serde_json::Value,
    /// The arrays, in file order.
    pub arrays: Vec<Array>,
}

impl Contents {
    /// Takes the array named `name` out, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let pos = self
            .arrays
            .iter()
            .position(|a| a.name == name)
            .with_context(|| format!("array `{name}` is missing"))?;
        let array = self.arrays.swap_remove(pos);
        if array.shape != shape {
            bail!(
                "array `{name}` has shape {:?}, expected {:?}",
                array.shape,
                shape
            );
        }
        Ok(array.values)
    }
}

/// Encodes a file of `kind` with the header `meta` and `arrays`.
pub fn encode(kind: Kind, meta: serde_json::Value, arrays: &[Array]) -> Result<Vec<u8>> {
    let header = Header {
        kind,
        arrays: arrays
            .iter()
            .map(|a| ArrayEntry {
                name: a.name.clone(),
                shape: a.shape.clone(),
            })
            .collect(),
        meta,
    };
    let header = serde_json::to_vec(&header)?;
    let values: usize = arrays.iter().map(|a| a.values.len()).sum();
    let mut out = Vec::with_capacity(PREFIX_BYTES + header.len() + 4 * values + CRC_BYTES);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&u32::try_from(header.len())?.to_le_bytes());
    out.extend_from_slice(&header);
    for array in arrays {
        if array.shape.iter().product::<usize>() != array.values.len() {
            bail!(
                "array `{}`: shape {:?} does not match {} values",
                array.name,
                array.shape,
                array.values.len()
            );
        }
        for v in &array.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a maas file; every way a file can be wrong is an error saying which.
pub fn decode(bytes: &[u8]) -> Result<Contents> {
    if bytes.len() < SIGNATURE.len() || &bytes[..SIGNATURE.len()] != SIGNATURE {
        bail!("not a maas model or checkpoint file (no maas signature)");
    }
    if bytes.len() < PREFIX_BYTES + CRC_BYTES {
        bail!("truncated ({} bytes)", bytes.len());
    }
    let header_len = read_u32(bytes, SIGNATURE.len() + 4) as usize;
    let header_end = PREFIX_BYTES.saturating_add(header_len);
    let header: Option<Header> = bytes
        .get(PREFIX_BYTES..header_end)
        .and_then(|h| serde_json::from_slice(h).ok());
    // `Some(None)`: a header whose shapes claim more bytes than a file can hold.
    let expected_len = header.as_ref().map(|h| {
        data_bytes(h).and_then(|data| header_end.saturating_add(CRC_BYTES).checked_add(data))
    });
    // Every format version ends with a CRC-32 of all before it, so no field is believed before
    // the checksum holds: a flipped bit in the version or the header length is damage, not a
    // newer maas or a truncation.
    let body_end = bytes.len() - CRC_BYTES;
    if crc32fast::hash(&bytes[..body_end]) != read_u32(bytes, body_end) {
        // A file cut short fails the checksum too; its header, when whole and readable, tells.
        match expected_len {
            Some(Some(expected)) if bytes.len() < expected => {
                bail!("truncated ({} of {expected} bytes)", bytes.len())
            }
            None if header_end.saturating_add(CRC_BYTES) > bytes.len() => {
                bail!("corrupted or truncated (checksum mismatch)")
            }
            _ => bail!("corrupted (checksum mismatch)"),
        }
    }
    let version = read_u32(bytes, SIGNATURE.len());
    if version > FORMAT_VERSION {
        bail!(
            "made by a newer maas (file format {version}; this maas {} reads format {FORMAT_VERSION} and older): upgrade maas",
            crate::VERSION
        );
    }
    if version == 0 {
        bail!("corrupted (format version 0)");
    }
    let Some(header) = header else {
        bail!("corrupted (unreadable header)");
    };
    let Some(expected) = expected_len.flatten() else {
        bail!("corrupted (array shapes too large for any file)");
    };
    if bytes.len() != expected {
        bail!("corrupted ({} bytes, expected {expected})", bytes.len());
    }
    let mut offset = header_end;
    let mut arrays = Vec::with_capacity(header.arrays.len());
    for entry in header.arrays {
        let n: usize = entry.shape.iter().product();
        let values = bytes[offset..offset + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        offset += 4 * n;
        arrays.push(Array {
            name: entry.name,
            shape: entry.shape,
            values,
        });
    }
    Ok(Contents {
        version,
        kind: header.kind,
        meta: header.meta,
        arrays,
    })
}

/// Largest maas file read, in bytes. The largest legal one is a checkpoint of the widest model
/// `train` makes (`--hidden 65536`, 256 classes): three copies of the weights (the model and
/// Adam's two moments), 2.6 GB, and a header that grows by a line per epoch. Anything larger,
/// or a device such as `/dev/zero`, is refused before it fills memory.
pub const MAX_FILE_BYTES: u64 = 4 << 30;

/// Reads and decodes the maas file at `path`; errors name the file.
pub fn read(path: &Path) -> Result<Contents> {
    if path.is_dir() {
        bail!(
            "{}: is a folder, expected a maas model or checkpoint file",
            path.display()
        );
    }
    let bytes = crate::fsutil::read_regular(path, MAX_FILE_BYTES)
        .with_context(|| format!("{}", path.display()))?;
    decode(&bytes).with_context(|| format!("{}", path.display()))
}

/// What the maas file at `path` says it holds, from its header alone; `None` when it is not a
/// regular file with a readable maas header. The checksum is deliberately not checked: this is
/// for deciding whether a file deserves protection, and a damaged checkpoint still does.
pub fn peek_kind(path: &Path) -> Option<Kind> {
    #[derive(Deserialize)]
    struct KindOnly {
        kind: Kind,
    }
    // Opening a FIFO to read it would wait for a writer.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut prefix = [0u8; PREFIX_BYTES];
    file.read_exact(&mut prefix).ok()?;
    if &prefix[..SIGNATURE.len()] != SIGNATURE {
        return None;
    }
    let header_len = read_u32(&prefix, SIGNATURE.len() + 4);
    let mut header = Vec::new();
    file.take(u64::from(header_len))
        .read_to_end(&mut header)
        .ok()?;
    serde_json::from_slice::<KindOnly>(&header)
        .ok()
        .map(|h| h.kind)
}

/// Encodes and writes a maas file atomically.
pub fn write(path: &Path, kind: Kind, meta: serde_json::Value, arrays: &[Array]) -> Result<()> {
    let bytes = encode(kind, meta, arrays)?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// The bytes the arrays of `header` take, or `None` when that overflows: a product or sum of
/// shapes straight from a file must not be trusted to fit.
fn data_bytes(header: &Header) -> Option<usize> {
    header
        .arrays
        .iter()
        .try_fold(0usize, |sum, a| {
            let n = a.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
            sum.checked_add(n)
        })?
        .checked_mul(4)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let arrays = [
            Array::new("w", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            Array::new("b", vec![1], vec![-1.5]),
        ];
        encode(Kind::Model, serde_json::json!({"hello": "world"}), &arrays).unwrap()
    }

    #[test]
    fn round_trips_arrays_and_meta() {
        let mut c = decode(&sample()).unwrap();
        assert_eq!(c.kind, Kind::Model);
        assert_eq!(c.meta["hello"], "world");
        assert_eq!(c.take("b", &[1]).unwrap(), vec![-1.5]);
        assert_eq!(c.take("w", &[2, 3]).unwrap()[5], 6.0);
        assert!(c.take("w", &[2, 3]).is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "a file cut to {len} bytes was accepted"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_an_error() {
        let bytes = sample();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    decode(&b).is_err(),
                    "a flip of bit {bit} of byte {i} was accepted"
                );
            }
        }
    }

    /// A header (with a valid checksum) whose shapes multiply or add past `usize::MAX`.
    fn with_shapes(shapes: &str) -> Vec<u8> {
        let header = format!(r#"{{"kind":"model","arrays":[{shapes}],"meta":null}}"#);
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    // Found while writing fuzz/load_model: these panicked with an arithmetic overflow.
    #[test]
    fn shapes_too_large_for_any_file_are_an_error() {
        let huge = u64::MAX / 2;
        for shapes in [
            r#"{"name":"w","shape":[4294967296,4294967296]}"#.to_string(),
            format!(r#"{{"name":"w","shape":[{huge}]}}"#),
            format!(r#"{{"name":"a","shape":[{huge}]}},{{"name":"b","shape":[{huge}]}}"#),
        ] {
            let err = format!("{:#}", decode(&with_shapes(&shapes)).unwrap_err());
            assert!(
                err.contains("truncated") || err.contains("too large"),
                "{err}"
            );
        }
    }

    /// `bytes` made by a maas whose format version is `version`: the checksum still holds.
    fn with_version(bytes: &[u8], version: u32) -> Vec<u8> {
        let mut b = bytes[..bytes.len() - CRC_BYTES].to_vec();
        b[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    // Issue 16: a flip in the version said "made by a newer maas", one in the header length
    // "truncated"; the checksum is checked first, so both are damage.
    #[test]
    fn a_bit_flip_in_the_version_or_length_is_corruption() {
        let bytes = sample();
        for i in 8..16 {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let err = format!("{:#}", decode(&b).unwrap_err());
                assert!(
                    err.contains("corrupted") && err.contains("checksum") && !err.contains("newer"),
                    "a flip of bit {bit} of byte {i}: {err}"
                );
            }
        }
    }

    #[test]
    fn names_the_problem() {
        let bytes = sample();
        let msg = |b: &[u8]| format!("{:#}", decode(b).unwrap_err());
        assert!(msg(b"\x89PNG\r\n\x1a\n....").contains("not a maas"));
        assert!(msg(&bytes[..bytes.len() - 10]).contains("truncated"));
        assert!(msg(&with_version(&bytes, 9)).contains("newer maas"));
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 8] ^= 0x10;
        assert!(msg(&flipped).contains("checksum"));
    }
}
