//! The `data` of a JSON tensor, flattened as it is read.
//!
//! The protocol allows `data` to be flat or nested row-major arrays. Reading it straight into
//! one flat vector (rather than a `serde_json::Value` tree, several times larger) keeps a
//! request's memory close to the size of its numbers.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// One element of a BYTES tensor in JSON: a base64 string, or `{"b64": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64Text(pub String);

/// Every scalar of a `data` array, in row-major order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatData {
    /// Numbers, as f32 (the only numeric datatype served).
    pub numbers: Vec<f32>,
    /// Strings (BYTES elements).
    pub strings: Vec<Base64Text>,
}

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut flat = FlatData::default();
        deserializer.deserialize_any(Collect(&mut flat))?;
        Ok(flat)
    }
}

struct Collect<'a>(&'a mut FlatData);

impl<'de> DeserializeSeed<'de> for Collect<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Collect<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("numbers, base64 strings, or arrays of them")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // Out-of-range values become infinite here and are refused with the others outside [0, 1].
        self.0.numbers.push(v as f32);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.strings.push(Base64Text(v.to_string()));
        Ok(())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.0.strings.push(Base64Text(v));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let flat = self.0;
        while seq.next_element_seed(Collect(&mut *flat))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut text = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "b64" || text.is_some() {
                return Err(de::Error::custom(format!(
                    "unexpected key {key:?} in data (only {{\"b64\": \"...\"}} is an object element)"
                )));
            }
            text = Some(map.next_value::<String>()?);
        }
        let text = text.ok_or_else(|| {
            de::Error::custom("empty object in data; expected {\"b64\": \"...\"}")
        })?;
        self.0.strings.push(Base64Text(text));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<FlatData, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn nested_and_flat_arrays_flatten_in_row_major_order() {
        let flat = parse("[0, 0.5, 1, 2, -3]").unwrap();
        assert_eq!(flat.numbers, [0.0, 0.5, 1.0, 2.0, -3.0]);
        let nested = parse("[[[0, 0.5], [1]], [[2, -3]]]").unwrap();
        assert_eq!(nested, flat);
        assert!(parse("[]").unwrap().numbers.is_empty());
    }

    #[test]
    fn strings_and_b64_objects_are_bytes_elements() {
        let flat = parse(r#"["Zm9v", {"b64": "YmFy"}, [["eA=="]]]"#).unwrap();
        let texts: Vec<_> = flat.strings.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(texts, ["Zm9v", "YmFy", "eA=="]);
        assert!(flat.numbers.is_empty());
    }

    #[test]
    fn other_json_is_an_error() {
        for bad in [
            "[true]",
            "[null]",
            r#"[{"x": "a"}]"#,
            "[{}]",
            r#"[{"b64": 1}]"#,
            "[1, 2",
        ] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
        // Too large for f32: kept, as infinity, for validation to refuse.
        assert!(parse("[1e300]").unwrap().numbers[0].is_infinite());
    }
}
