//! EC2 Query parameters both ways: flattened keys (`ImageId.1`, `Filter.1.Value.1`,
//! `BlockDeviceMapping.1.Ebs.SnapshotId`) written from our types and read back into them.

use std::collections::BTreeMap;

use super::ApiError;

/// Most form parameters one request may carry; AWS's own request size limit is far lower.
pub const MAX_PARAMS: usize = 10_000;
/// Longest key or value accepted (AWS caps a whole Query request well below this).
pub const MAX_PARAM_LEN: usize = 1 << 20;

/// Form parameters being written, in order.
#[derive(Debug, Default, Clone)]
pub struct ParamWriter {
    /// The `(key, value)` pairs so far.
    pub params: Vec<(String, String)>,
}

impl ParamWriter {
    /// Adds one parameter.
    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        self.params.push((key.to_string(), value.into()));
    }
}

/// Form parameters being read, by key.
#[derive(Debug, Clone)]
pub struct ParamReader {
    map: BTreeMap<String, String>,
}

impl ParamReader {
    /// Indexes `params`; a repeated key or an oversized request is `InvalidParameterValue`.
    pub fn new(params: &[(String, String)]) -> Result<Self, ApiError> {
        if params.len() > MAX_PARAMS {
            return Err(ApiError::invalid(format!(
                "too many parameters: {} (at most {MAX_PARAMS})",
                params.len()
            )));
        }
        let mut map = BTreeMap::new();
        for (k, v) in params {
            if k.len() > MAX_PARAM_LEN || v.len() > MAX_PARAM_LEN {
                return Err(ApiError::invalid(format!(
                    "parameter {:.64} is longer than {MAX_PARAM_LEN} bytes",
                    k
                )));
            }
            if map.insert(k.clone(), v.clone()).is_some() {
                return Err(ApiError::invalid(format!("parameter {k} given twice")));
            }
        }
        Ok(Self { map })
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Returns true if and only if some parameter's key starts with `prefix` followed by `.`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        let p = format!("{prefix}.");
        self.map
            .range(p.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&p))
    }

    /// Every key, for reporting unknown parameters.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}

/// A value that is one parameter (`String`, `bool`, `i64`) or a group of them (a structure).
pub trait QueryValue: Sized {
    /// Writes the value under `key`.
    fn encode(&self, key: &str, out: &mut ParamWriter);
    /// Reads the value under `key`; `None` if nothing was given under it.
    fn decode(r: &ParamReader, key: &str) -> Result<Option<Self>, ApiError>;
}

impl QueryValue for String {
    fn encode(&self, key: &str, out: &mut ParamWriter) {
        out.push(key, self.clone());
    }
    fn decode(r: &ParamReader, key: &str) -> Result<Option<Self>, ApiError> {
        Ok(r.get(key).map(str::to_string))
    }
}

impl QueryValue for bool {
    fn encode(&self, key: &str, out: &mut ParamWriter) {
        out.push(key, if *self { "true" } else { "false" });
    }
    fn decode(r: &ParamReader, key: &str) -> Result<Option<Self>, ApiError> {
        match r.get(key) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(format!(
                "Value ({v:.64}) for parameter {key} is invalid. Expected: 'true' or 'false'."
            ))),
        }
    }
}

impl QueryValue for i64 {
    fn encode(&self, key: &str, out: &mut ParamWriter) {
        out.push(key, self.to_string());
    }
    fn decode(r: &ParamReader, key: &str) -> Result<Option<Self>, ApiError> {
        match r.get(key) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                ApiError::invalid(format!(
                    "Value ({v:.64}) for parameter {key} is invalid. Expected an integer."
                ))
            }),
        }
    }
}

/// A field of a request: required (`T`), optional (`Option<T>`) or a list (`Vec<T>`, keys
/// `key.1`, `key.2`, ... without gaps).
pub trait QueryField: Sized {
    /// Writes the field under `key`.
    fn encode_field(&self, key: &str, out: &mut ParamWriter);
    /// Reads the field under `key`: a missing required one is `MissingParameter`.
    fn decode_field(r: &ParamReader, key: &str) -> Result<Self, ApiError>;
}

macro_rules! required_field {
    ($($t:ty),*) => {$(
        impl $crate::ec2::QueryField for $t {
            fn encode_field(&self, key: &str, out: &mut $crate::ec2::ParamWriter) {
                <$t as $crate::ec2::QueryValue>::encode(self, key, out);
            }
            fn decode_field(r: &$crate::ec2::ParamReader, key: &str) -> Result<Self, $crate::ec2::ApiError> {
                <$t as $crate::ec2::QueryValue>::decode(r, key)?.ok_or_else(|| $crate::ec2::ApiError::missing(key))
            }
        }
    )*};
}
required_field!(String, bool, i64);
pub(crate) use required_field;

impl<T: QueryValue> QueryField for Option<T> {
    fn encode_field(&self, key: &str, out: &mut ParamWriter) {
        if let Some(v) = self {
            v.encode(key, out);
        }
    }
    fn decode_field(r: &ParamReader, key: &str) -> Result<Self, ApiError> {
        T::decode(r, key)
    }
}

impl<T: QueryValue> QueryField for Vec<T> {
    fn encode_field(&self, key: &str, out: &mut ParamWriter) {
        for (i, v) in self.iter().enumerate() {
            v.encode(&format!("{key}.{}", i + 1), out);
        }
    }
    fn decode_field(r: &ParamReader, key: &str) -> Result<Self, ApiError> {
        let mut items = Vec::new();
        // Every item needs at least one parameter, so MAX_PARAMS bounds the loop.
        for i in 1..=MAX_PARAMS {
            match T::decode(r, &format!("{key}.{i}"))? {
                Some(v) => items.push(v),
                None => break,
            }
        }
        Ok(items)
    }
}
