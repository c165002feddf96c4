//! The metadata messages, one schema for both ends: `maas serve` builds and sends them (REST as
//! JSON, gRPC as its messages), the `--url` client reads them from any v2 server, which may leave
//! out what maas always gives (hence the options). Lists are bounded while they are read: a
//! server's answer (up to 64 MiB) cannot make the client build millions of entries.

use std::marker::PhantomData;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::names::{EXTENSIONS, FP32, INPUT_NAME, OUTPUT_NAME, SERVER_NAME};
use crate::data::preprocess::SIDE;

/// The most classes a deployed model may have: a full request's answer (256 rows of FP32) is
/// then 64 MiB, the most a client reads. A server claiming more is refused before anything is
/// sized by its claim.
pub const MAX_CLASSES: usize = 1 << 16;
/// The most tensors (inputs, outputs) a model's metadata or an answer may list.
pub const MAX_TENSORS: usize = 1024;

/// `GET /v2`, gRPC's ServerMetadata.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ServerMetadata {
    /// The server's name (`maas`, `triton`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The protocol extensions it supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Vec<String>>,
}

impl ServerMetadata {
    /// What `maas serve` says of itself.
    pub fn maas() -> Self {
        Self {
            name: Some(SERVER_NAME.into()),
            version: Some(crate::VERSION.into()),
            extensions: Some(EXTENSIONS.iter().map(|e| e.to_string()).collect()),
        }
    }

    /// Whether the server takes and gives binary tensor data.
    pub fn binary(&self) -> bool {
        self.extensions
            .iter()
            .flatten()
            .any(|e| e == super::names::BINARY_EXTENSION)
    }
}

/// One tensor of a model's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// Its name.
    pub name: String,
    /// Its datatype (`FP32`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datatype: Option<String>,
    /// Its shape; -1 for a dimension of any size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
}

/// `GET /v2/models/{name}[/versions/{v}]`, gRPC's ModelMetadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// Its loaded versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<String>>,
    /// What runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Its inputs.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounded_option::<_, _, MAX_TENSORS>"
    )]
    pub inputs: Option<Vec<TensorMetadata>>,
    /// Its outputs.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounded_option::<_, _, MAX_TENSORS>"
    )]
    pub outputs: Option<Vec<TensorMetadata>>,
    /// Class names, in index order (`maas serve` gives them; the protocol does not require it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounded_option::<_, _, MAX_CLASSES>"
    )]
    pub classes: Option<Vec<String>>,
}

impl ModelMetadata {
    /// A maas model's metadata: FP32 `[-1,3,SIDE,SIDE]` in, FP32 `[-1,classes]` out.
    pub fn maas(name: &str, versions: Vec<String>, classes: &[String]) -> Self {
        let side = i64::from(SIDE);
        let tensor = |name: &str, shape: Vec<i64>| TensorMetadata {
            name: name.into(),
            datatype: Some(FP32.into()),
            shape: Some(shape),
        };
        Self {
            name: name.into(),
            versions: Some(versions),
            platform: Some(SERVER_NAME.into()),
            inputs: Some(vec![tensor(INPUT_NAME, vec![-1, 3, side, side])]),
            outputs: Some(vec![tensor(OUTPUT_NAME, vec![-1, dim(classes.len())])]),
            classes: Some(classes.to_vec()),
        }
    }

    /// How many classes the first output has, when its shape says; the server's mistake when it
    /// says more than [`MAX_CLASSES`].
    pub fn output_classes(&self) -> Result<Option<usize>, String> {
        let Some(output) = self.outputs.as_ref().and_then(|o| o.first()) else {
            return Ok(None);
        };
        match output.shape.as_deref() {
            Some(shape @ [_, c]) if *c > 0 => class_count(&output.name, shape).map(Some),
            _ => Ok(None),
        }
    }
}

/// One entry of Triton's repository index (`POST /v2/repository/index`, gRPC's RepositoryIndex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The model's name.
    pub name: String,
    /// The version; none for a model with no version loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// [`READY`](super::names::READY) when it serves; other servers may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why it is not ready, or what went wrong with its last load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl IndexEntry {
    /// Whether it serves (a server that gives no state: taken as serving).
    pub fn ready(&self) -> bool {
        self.state
            .as_deref()
            .is_none_or(|s| s == super::names::READY)
    }
}

/// A count as a tensor dimension.
pub fn dim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The classes of an output of `shape` `[rows, C]`, C from 1 to [`MAX_CLASSES`]; else what is
/// wrong with it.
pub fn class_count(name: &str, shape: &[i64]) -> Result<usize, String> {
    match shape {
        [_, c] if (1..=MAX_CLASSES as i64).contains(c) => Ok(*c as usize),
        [_, c] if *c > 0 => Err(format!(
            "output '{name}' has shape {shape:?}: more than the {MAX_CLASSES} classes a client takes"
        )),
        _ => Err(format!(
            "output '{name}' has shape {shape:?}, expected [rows, classes]"
        )),
    }
}

/// A JSON list of at most `MAX` entries, refused as soon as it holds more.
struct Bounded<T, const MAX: usize>(Vec<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for Bounded<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<T, const MAX: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Entries<T, MAX> {
            type Value = Bounded<T, MAX>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a list of at most {MAX} entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    if entries.len() == MAX {
                        return Err(serde::de::Error::custom(format!(
                            "a list of more than {MAX} entries"
                        )));
                    }
                    entries.push(entry);
                }
                Ok(Bounded(entries))
            }
        }
        deserializer.deserialize_seq(Entries(PhantomData))
    }
}

fn bounded_option<'de, D, T, const MAX: usize>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Bounded<T, MAX>>::deserialize(d)?.map(|b| b.0))
}

/// A list of at most `MAX` entries, for `#[serde(deserialize_with)]`.
pub fn bounded<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Bounded::<T, MAX>::deserialize(d)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::names::{READY, UNAVAILABLE};
    use serde_json::json;

    /// What the server sends is what the client reads: one schema, both ways.
    #[test]
    fn maas_metadata_round_trips_through_json() {
        let classes = vec!["cat".to_string(), "dog".to_string()];
        let sent = ModelMetadata::maas("cifar", vec!["1".into(), "2".into()], &classes);
        let json = serde_json::to_value(&sent).unwrap();
        assert_eq!(
            json,
            json!({
                "name": "cifar",
                "versions": ["1", "2"],
                "platform": "maas",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, SIDE, SIDE]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
                "classes": ["cat", "dog"],
            })
        );
        let read: ModelMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(read.output_classes(), Ok(Some(2)));
        assert_eq!(read.classes, Some(classes));
        let server = serde_json::to_value(ServerMetadata::maas()).unwrap();
        assert_eq!(server["extensions"], json!(EXTENSIONS));
        assert!(
            serde_json::from_value::<ServerMetadata>(server)
                .unwrap()
                .binary()
        );
        // Another server may say less: what it leaves out is absent, not an error.
        let bare: ModelMetadata = serde_json::from_value(json!({"name": "m"})).unwrap();
        assert_eq!(bare.output_classes(), Ok(None));
        assert!(!ServerMetadata::default().binary());
    }

    #[test]
    fn index_entries_read_as_written_and_ready_only_when_they_say_so() {
        let entry = IndexEntry {
            name: "cifar".into(),
            version: Some("2".into()),
            state: Some(UNAVAILABLE.into()),
            reason: Some(String::new()),
        };
        let json = serde_json::to_value(&entry).unwrap();
        // Triton's clients read `reason` even when empty.
        assert_eq!(
            json,
            json!({"name": "cifar", "version": "2", "state": "UNAVAILABLE", "reason": ""})
        );
        let read: IndexEntry = serde_json::from_value(json).unwrap();
        assert_eq!(read, entry);
        assert!(!read.ready());
        let bare: IndexEntry = serde_json::from_value(json!({"name": "m"})).unwrap();
        assert!(bare.ready());
        let ready: IndexEntry =
            serde_json::from_value(json!({"name": "m", "state": READY})).unwrap();
        assert!(ready.ready());
    }
}
