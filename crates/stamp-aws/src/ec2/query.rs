//! EC2 Query parameters both ways: flattened keys (`ImageId.1`, `Filter.1.Value.1`,
//! `BlockDeviceMapping.1.Ebs.SnapshotId`) written from our types and read back into them.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use super::ApiError;

/// Most form parameters one request may carry; AWS's own request size limit is far lower.
pub const MAX_PARAMS: usize = 10_000;
/// Largest form body [`form_decode`] reads (ImportInstance's user data, the largest EC2 value
/// these actions carry, is 16 KiB).
pub const MAX_FORM_LEN: usize = 8 << 20;
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

/// Parameters every request may carry besides its action's own: the action, the version and
/// the query-string forms of signing (SigV2 and presigned SigV4).
pub const COMMON_PARAMS: &[&str] = &[
    "Action",
    "Version",
    "AWSAccessKeyId",
    "Signature",
    "SignatureMethod",
    "SignatureVersion",
    "Timestamp",
    "Expires",
    "SecurityToken",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// Form parameters being read, by key; remembers which keys were read so that the rest can be
/// reported as `UnknownParameter`.
#[derive(Debug, Clone)]
pub struct ParamReader {
    map: BTreeMap<String, String>,
    read: RefCell<BTreeSet<String>>,
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
        Ok(Self {
            map,
            read: RefCell::new(BTreeSet::new()),
        })
    }

    /// The value of `key`, if given (and marks it read).
    pub fn get(&self, key: &str) -> Option<&str> {
        let (k, v) = self.map.get_key_value(key)?;
        self.read.borrow_mut().insert(k.clone());
        Some(v.as_str())
    }

    /// `UnknownParameter` naming the first parameter that was never read and is not one of
    /// [`COMMON_PARAMS`].
    pub fn check_all_read(&self) -> Result<(), ApiError> {
        let read = self.read.borrow();
        match self
            .map
            .keys()
            .find(|k| !read.contains(*k) && !COMMON_PARAMS.contains(&k.as_str()))
        {
            None => Ok(()),
            Some(k) => Err(ApiError::new(
                "UnknownParameter",
                format!("The parameter {k:.128} is not recognized"),
            )),
        }
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

/// The parameters as an `application/x-www-form-urlencoded` body, every byte but RFC 3986's
/// unreserved characters percent-encoded (the encoding SigV4's canonical form also uses).
pub fn form_encode(params: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

/// `s` with every byte but RFC 3986's unreserved characters percent-encoded (for query values
/// and form bodies).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads an `application/x-www-form-urlencoded` body (`+` is a space). A bad `%` escape,
/// text that is not UTF-8, more than [`MAX_PARAMS`] pairs or more than [`MAX_FORM_LEN`] bytes
/// is `InvalidParameterValue`.
pub fn form_decode(body: &str) -> Result<Vec<(String, String)>, ApiError> {
    if body.len() > MAX_FORM_LEN {
        return Err(ApiError::invalid(format!(
            "request body of {} bytes is larger than {MAX_FORM_LEN}",
            body.len()
        )));
    }
    fn dec(s: &str, at: usize) -> Result<String, ApiError> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = bytes
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| {
                            ApiError::invalid(format!(
                                "bad percent escape at byte {} of the request body",
                                at + i
                            ))
                        })?;
                    out.push(hex);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| {
            ApiError::invalid(format!(
                "parameter at byte {at} of the request body is not UTF-8"
            ))
        })
    }
    let mut params = Vec::new();
    let mut at = 0;
    for pair in body.split('&') {
        if !pair.is_empty() {
            if params.len() >= MAX_PARAMS {
                return Err(ApiError::invalid(format!(
                    "too many parameters (at most {MAX_PARAMS})"
                )));
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            params.push((dec(k, at)?, dec(v, at + k.len() + 1)?));
        }
        at += pair.len() + 1;
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip_and_plus() {
        let params = vec![
            ("Action".to_string(), "RegisterImage".to_string()),
            ("Name".to_string(), "a b&c=d/é+%".to_string()),
            ("Empty".to_string(), String::new()),
        ];
        let body = form_encode(&params);
        assert_eq!(
            body,
            "Action=RegisterImage&Name=a%20b%26c%3Dd%2F%C3%A9%2B%25&Empty="
        );
        assert_eq!(form_decode(&body).unwrap(), params);
        assert_eq!(
            form_decode("Name=a+b&Flag").unwrap(),
            vec![
                ("Name".to_string(), "a b".to_string()),
                ("Flag".to_string(), String::new())
            ]
        );
    }

    #[test]
    fn form_decode_rejects_bad_escapes() {
        for body in ["Name=%", "Name=%4", "Name=%zz", "Name=%FF"] {
            let e = form_decode(body).unwrap_err();
            assert_eq!(e.code, "InvalidParameterValue", "{body}");
        }
        let e = form_decode(&"a".repeat(MAX_FORM_LEN + 1)).unwrap_err();
        assert!(e.message.contains("larger"), "{e}");
        let many = "a=1&".repeat(MAX_PARAMS + 1);
        assert!(form_decode(&many).unwrap_err().message.contains("too many"));
    }
}
