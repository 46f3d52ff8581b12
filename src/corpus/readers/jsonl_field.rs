//! Parsing one JSONL line with serde, materializing only the document field: a
//! `DeserializeSeed`/`Visitor` pair walks the object, skips the other values unbuilt
//! ([`IgnoredAny`]) and keeps the field as text, token ids, null, or the kind of value it is.
//! Error messages are [`super::jsonl`]'s.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{int_to_id, IdProblem};

/// Parse one JSONL line, materializing only the document field.
pub(super) fn parse_jsonl_line(line: &[u8], field: &str) -> serde_json::Result<LineValue> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let value = LineSeed { field }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// What a JSONL line holds.
pub(super) enum LineValue {
    Object {
        value: Option<FieldValue>,
        /// The keys seen before the field was found (all keys if it is missing).
        keys: Vec<String>,
    },
    NotObject(&'static str),
}

/// What the document field holds.
pub(super) enum FieldValue {
    Text(String),
    Ids(Vec<u32>),
    BadId(IdProblem),
    Null,
    Other(&'static str),
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn json_to_id(v: &serde_json::Value) -> std::result::Result<u32, String> {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                int_to_id(u as i128)
            } else if let Some(i) = n.as_i64() {
                int_to_id(i as i128)
            } else {
                Err(format!("is {n}, not an integer"))
            }
        }
        other => Err(format!("is {}", json_kind(other))),
    }
}

struct LineSeed<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = LineValue;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<LineValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = LineValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<LineValue, A::Error> {
        let mut value = None;
        let mut keys = Vec::new();
        loop {
            let seed = KeySeed {
                field: self.field,
                keys: if value.is_none() {
                    Some(&mut keys)
                } else {
                    None
                },
            };
            match map.next_key_seed(seed)? {
                None => break,
                Some(true) => value = Some(map.next_value::<FieldValue>()?),
                Some(false) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(LineValue::Object { value, keys })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<LineValue, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LineValue::NotObject("an array"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a string"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("null"))
    }
}

/// Deserializes an object key into "is it the document field?", remembering the key names.
struct KeySeed<'f, 'k> {
    field: &'f str,
    keys: Option<&'k mut Vec<String>>,
}

/// At most this many key names are kept for the "no such field" message.
const MAX_KEYS_LISTED: usize = 32;

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> std::result::Result<bool, E> {
        if key == self.field {
            return Ok(true);
        }
        if let Some(keys) = self.keys {
            if keys.len() < MAX_KEYS_LISTED {
                keys.push(key.to_string());
            }
        }
        Ok(false)
    }
}

impl<'de> de::Deserialize<'de> for FieldValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = FieldValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array of token ids")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Text(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<FieldValue, A::Error> {
        let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let mut problem = None;
        let mut index = 0;
        while let Some(v) = seq.next_element::<serde_json::Value>()? {
            if problem.is_none() {
                match json_to_id(&v) {
                    Ok(id) => ids.push(id),
                    Err(what) => problem = Some(IdProblem { index, what }),
                }
            }
            index += 1;
        }
        Ok(match problem {
            Some(p) => FieldValue::BadId(p),
            None => FieldValue::Ids(ids),
        })
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Other("a number"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<FieldValue, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(FieldValue::Other("an object"))
    }
}
