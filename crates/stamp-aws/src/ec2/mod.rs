//! The EC2 Query API (version 2016-11-15) as our own types, for the client (`stamp push aws://`)
//! and for the server (`stamp serve`), both ways:
//!
//! - requests: [`encode_request`] writes `Action`, `Version` and the flattened parameters
//!   (`ImageId.1`, `Filter.1.Value.1`, `BlockDeviceMapping.1.Ebs.SnapshotId`);
//!   [`decode_request`] and [`Request::decode`] read them back from form parameters, with
//!   `MissingParameter` / `InvalidParameterValue` errors ([`ApiError`]);
//! - responses: [`write_response`] writes `<XResponse xmlns=...><requestId>` with `<item>` lists,
//!   [`parse_response`] reads it (and turns AWS's error XML into [`crate::Error::Api`]);
//! - errors: [`ErrorResponse`] writes and parses `<Response><Errors><Error>...`.
//!
//! The structures in [`types`] are generated from botocore's model of the shapes (the shapes
//! clients serialize and parse) by `gen_types.py`; field names are the members' in snake case.
//!
//! ```
//! use stamp_aws::ec2::{self, DescribeImagesRequest, Filter};
//! let req = DescribeImagesRequest {
//!     owners: vec!["self".into()],
//!     filters: vec![Filter { name: Some("name".into()), values: vec!["debian-*".into()] }],
//!     ..Default::default()
//! };
//! let params = ec2::encode_request(&req);
//! assert!(params.contains(&("Filter.1.Value.1".into(), "debian-*".into())));
//! assert_eq!(ec2::decode_request::<DescribeImagesRequest>(&params).unwrap(), req);
//! ```

pub mod query;
pub mod types;
pub mod xml;

pub use query::{ParamReader, ParamWriter, QueryField, QueryValue, form_decode, form_encode};
pub use types::*;
pub use xml::{Node, XmlField, XmlValue, XmlWriter};

use crate::Error;

/// The API version every request names.
pub const VERSION: &str = "2016-11-15";
/// The namespace of every response.
pub const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// An EC2 error as AWS reports it: a code (`MissingParameter`, `InvalidParameterValue`, ...)
/// and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// AWS's error code.
    pub code: String,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
    /// `MissingParameter` for the parameter `key`.
    pub fn missing(key: &str) -> Self {
        Self::new(
            "MissingParameter",
            format!("The request must contain the parameter {key}"),
        )
    }
    /// `InvalidParameterValue` with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterValue", message)
    }

    /// The HTTP status AWS answers this error with: 401 for `AuthFailure`, 403 for
    /// `UnauthorizedOperation`, 412 for `DryRunOperation`, 503 for `RequestLimitExceeded` and
    /// `Unavailable`, 500 for `InternalError`, otherwise 400 (every client error, including
    /// the `*.NotFound` codes).
    pub fn http_status(&self) -> u16 {
        match self.code.as_str() {
            "AuthFailure" => 401,
            "UnauthorizedOperation" | "OptInRequired" | "Blocked" => 403,
            "DryRunOperation" => 412,
            "RequestLimitExceeded" | "Unavailable" | "ServiceUnavailable" => 503,
            "InternalError" | "InternalFailure" => 500,
            _ => 400,
        }
    }
}

/// AWS's error document: `<Response><Errors><Error><Code>..</Code><Message>..</Message></Error>
/// </Errors><RequestID>..</RequestID></Response>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The errors (AWS sends one).
    pub errors: Vec<ApiError>,
    /// The request id.
    pub request_id: String,
}

impl ErrorResponse {
    /// Writes the error document.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::default();
        w.out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        w.open("Response");
        w.open("Errors");
        for e in &self.errors {
            w.open("Error");
            w.leaf("Code", &e.code);
            w.leaf("Message", &e.message);
            w.close("Error");
        }
        w.close("Errors");
        w.leaf("RequestID", &self.request_id);
        w.close("Response");
        w.out
    }

    /// Parses an error document; `None` if `xml` is not one.
    pub fn parse(xml: &str) -> Option<Self> {
        let root = xml::parse(xml).ok()?;
        Self::from_node(&root)
    }

    fn from_node(root: &Node) -> Option<Self> {
        if root.name != "Response" {
            return None;
        }
        let errors = root
            .child("Errors")?
            .children
            .iter()
            .filter(|e| e.name == "Error")
            .map(|e| ApiError {
                code: e.child("Code").map(|n| n.text.clone()).unwrap_or_default(),
                message: e
                    .child("Message")
                    .map(|n| n.text.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let request_id = root
            .child("RequestID")
            .or_else(|| root.child("RequestId"))
            .map(|n| n.text.clone())
            .unwrap_or_default();
        Some(Self { errors, request_id })
    }
}

impl Tag {
    /// A tag `key=value`.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            value: Some(value.into()),
        }
    }
}

impl Filter {
    /// A filter on `name` matching any of `values`.
    pub fn new(
        name: impl Into<String>,
        values: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: Some(name.into()),
            values: values.into_iter().map(Into::into).collect(),
        }
    }
}

impl TagSpecification {
    /// `tags` for resources of `resource_type` (`image`, `snapshot`, `import-image-task`, ...).
    pub fn new(resource_type: impl Into<String>, tags: Vec<Tag>) -> Self {
        Self {
            resource_type: Some(resource_type.into()),
            tags,
        }
    }
}

impl Image {
    /// The snapshot behind the root device: the EBS mapping whose device is the image's root
    /// device name, or else the first EBS mapping with a snapshot.
    pub fn root_snapshot_id(&self) -> Option<&str> {
        fn ebs_snapshot(m: &BlockDeviceMapping) -> Option<&str> {
            m.ebs.as_ref()?.snapshot_id.as_deref()
        }
        self.block_device_mappings
            .iter()
            .find(|m| m.device_name.is_some() && m.device_name == self.root_device_name)
            .and_then(ebs_snapshot)
            .or_else(|| self.block_device_mappings.iter().find_map(ebs_snapshot))
    }

    /// Every EBS snapshot the image maps (what deregistering leaves behind to delete).
    pub fn snapshot_ids(&self) -> Vec<&str> {
        self.block_device_mappings
            .iter()
            .filter_map(|m| m.ebs.as_ref()?.snapshot_id.as_deref())
            .collect()
    }
}

/// A request of one action; its response type is [`Ec2Request::Response`].
pub trait Ec2Request: QueryValue + Sized {
    /// The `Action` parameter.
    const ACTION: &'static str;
    /// The action's response.
    type Response: Ec2Response;
    /// Reads the request's fields (without `Action`/`Version`).
    fn decode_fields(r: &ParamReader) -> Result<Self, ApiError>;
}

/// A response of one action.
pub trait Ec2Response: XmlValue {
    /// The action (the root element is `<{ACTION}Response>`).
    const ACTION: &'static str;
    /// Writes the response's fields (without the root element).
    fn write_fields(&self, w: &mut XmlWriter);
}

/// The form parameters of `req`: `Action`, `Version`, then its fields.
pub fn encode_request<R: Ec2Request>(req: &R) -> Vec<(String, String)> {
    let mut w = ParamWriter::default();
    w.push("Action", R::ACTION);
    w.push("Version", VERSION);
    req.encode("", &mut w);
    w.params
}

/// Reads a request of type `R` from form parameters; `Action` must name `R`'s action, and a
/// parameter the action does not have is `UnknownParameter` (as AWS answers).
pub fn decode_request<R: Ec2Request>(params: &[(String, String)]) -> Result<R, ApiError> {
    let r = ParamReader::new(params)?;
    match r.get("Action") {
        None => return Err(ApiError::missing("Action")),
        Some(a) if a != R::ACTION => {
            return Err(ApiError::new(
                "InvalidAction",
                format!("expected action {}, got {a:.64}", R::ACTION),
            ));
        }
        Some(_) => {}
    }
    check_version(&r)?;
    let req = R::decode_fields(&r)?;
    r.check_all_read()?;
    Ok(req)
}

fn check_version(r: &ParamReader) -> Result<(), ApiError> {
    match r.get("Version") {
        None => Err(ApiError::missing("Version")),
        Some(VERSION) => Ok(()),
        Some(v) => Err(ApiError::new(
            "InvalidParameterValue",
            format!("Version {v:.64} is not supported; use {VERSION}"),
        )),
    }
}

/// Writes `resp` as AWS does: `<{Action}Response xmlns="..."><requestId>..</requestId>...`.
pub fn write_response<R: Ec2Response>(resp: &R, request_id: &str) -> String {
    let mut w = XmlWriter::default();
    w.out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    w.out
        .push_str(&format!(r#"<{}Response xmlns="{XMLNS}">"#, R::ACTION));
    w.leaf("requestId", request_id);
    resp.write_fields(&mut w);
    w.close(&format!("{}Response", R::ACTION));
    w.out
}

/// Parses a response of type `R` and its request id. AWS's error document becomes
/// [`Error::Api`]; anything else unexpected is [`Error::Malformed`].
pub fn parse_response<R: Ec2Response>(xml: &str) -> crate::Result<(R, String)> {
    let malformed = |detail: String| Error::Malformed {
        service: "ec2",
        action: R::ACTION.to_string(),
        detail,
    };
    let root = xml::parse(xml).map_err(malformed)?;
    if let Some(err) = ErrorResponse::from_node(&root) {
        let first = err
            .errors
            .into_iter()
            .next()
            .unwrap_or_else(|| ApiError::new("Unknown", "error response without an <Error>"));
        return Err(Error::Api {
            service: "ec2",
            action: R::ACTION.to_string(),
            code: first.code,
            message: first.message,
        });
    }
    let expected = format!("{}Response", R::ACTION);
    if root.name != expected {
        return Err(malformed(format!(
            "root element <{:.64}>, expected <{expected}>",
            root.name
        )));
    }
    let request_id = root
        .child("requestId")
        .map(|n| n.text.clone())
        .unwrap_or_default();
    let resp = R::read_xml(&root).map_err(malformed)?;
    Ok((resp, request_id))
}

/// Defines a structure with its Query keys and XML names, and its [`QueryValue`],
/// [`QueryField`], [`XmlValue`] and [`XmlField`] implementations.
macro_rules! ec2_struct {
    (
        $(#[$m:meta])*
        $name:ident {
            $( $(#[$fm:meta])* $field:ident : $ty:ty = $q:literal, $x:literal; )*
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $( $(#[$fm])* pub $field: $ty, )*
        }

        impl $name {
            /// Reads the fields under `prefix` (empty for a request's top level).
            #[allow(unused_variables)]
            pub fn query_fields(
                r: &$crate::ec2::ParamReader,
                prefix: &str,
            ) -> Result<Self, $crate::ec2::ApiError> {
                Ok(Self {
                    $( $field: <$ty as $crate::ec2::QueryField>::decode_field(
                        r, &$crate::ec2::join_key(prefix, $q))?, )*
                })
            }
        }

        impl $crate::ec2::QueryValue for $name {
            #[allow(unused_variables)]
            fn encode(&self, key: &str, out: &mut $crate::ec2::ParamWriter) {
                $( $crate::ec2::QueryField::encode_field(
                    &self.$field, &$crate::ec2::join_key(key, $q), out); )*
            }
            fn decode(
                r: &$crate::ec2::ParamReader,
                key: &str,
            ) -> Result<Option<Self>, $crate::ec2::ApiError> {
                if !r.has_prefix(key) {
                    return Ok(None);
                }
                Self::query_fields(r, key).map(Some)
            }
        }

        impl $name {
            /// Writes the fields as child elements (without an element around them).
            #[allow(unused_variables)]
            pub fn write_xml_fields(&self, w: &mut $crate::ec2::XmlWriter) {
                $( $crate::ec2::XmlField::write_field(&self.$field, $x, w); )*
            }
        }
        $crate::ec2::query::required_field!($name);

        impl $crate::ec2::XmlValue for $name {
            #[allow(unused_variables)]
            fn write_xml(&self, name: &str, w: &mut $crate::ec2::XmlWriter) {
                w.open(name);
                self.write_xml_fields(w);
                w.close(name);
            }
            #[allow(unused_variables)]
            fn read_xml(node: &$crate::ec2::Node) -> Result<Self, String> {
                Ok(Self {
                    $( $field: <$ty as $crate::ec2::XmlField>::read_field(node, $x)?, )*
                })
            }
        }
        $crate::ec2::xml::required_xml_field!($name);
    };
}
pub(crate) use ec2_struct;

/// Declares the actions: each request's [`Ec2Request`], each response's [`Ec2Response`], and
/// the [`Request`] enum the server dispatches on.
macro_rules! ec2_actions {
    ( $( $action:ident : $req:ident => $resp:ident; )* ) => {
        $(
            impl $crate::ec2::Ec2Request for $req {
                const ACTION: &'static str = stringify!($action);
                type Response = $resp;
                fn decode_fields(
                    r: &$crate::ec2::ParamReader,
                ) -> Result<Self, $crate::ec2::ApiError> {
                    Self::query_fields(r, "")
                }
            }
            impl $crate::ec2::Ec2Response for $resp {
                const ACTION: &'static str = stringify!($action);
                fn write_fields(&self, w: &mut $crate::ec2::XmlWriter) {
                    self.write_xml_fields(w);
                }
            }
        )*

        /// Any request this module knows, for a server to dispatch on.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[allow(clippy::large_enum_variant)]
        pub enum Request {
            $(
                #[doc = concat!("`", stringify!($action), "`.")]
                $action($req),
            )*
        }

        /// The actions this module knows.
        pub const ACTIONS: &[&str] = &[ $( stringify!($action), )* ];

        impl Request {
            /// Reads any known request from form parameters. An unknown `Action` is
            /// `InvalidAction`; a missing one `MissingAction`; a parameter the action does not
            /// have `UnknownParameter`.
            pub fn decode(params: &[(String, String)]) -> Result<Self, $crate::ec2::ApiError> {
                let r = $crate::ec2::ParamReader::new(params)?;
                let action = r.get("Action").ok_or_else(|| $crate::ec2::ApiError::new(
                    "MissingAction", "The request must contain the parameter Action"))?;
                match action {
                    $( stringify!($action) => {
                        $crate::ec2::check_version_pub(&r)?;
                        let req = <$req as $crate::ec2::Ec2Request>::decode_fields(&r)?;
                        r.check_all_read()?;
                        Ok(Self::$action(req))
                    } )*
                    other => Err($crate::ec2::ApiError::new(
                        "InvalidAction",
                        format!("The action {other:.64} is not valid for this web service."))),
                }
            }

            /// The action's name.
            pub fn action(&self) -> &'static str {
                match self {
                    $( Self::$action(_) => stringify!($action), )*
                }
            }

            /// The form parameters (`Action`, `Version`, fields).
            pub fn encode(&self) -> Vec<(String, String)> {
                match self {
                    $( Self::$action(r) => $crate::ec2::encode_request(r), )*
                }
            }
        }
    };
}
pub(crate) use ec2_actions;

/// `prefix.key`, or `key` for an empty prefix.
#[doc(hidden)]
pub fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Checks `Version=2016-11-15`.
#[doc(hidden)]
pub fn check_version_pub(r: &ParamReader) -> Result<(), ApiError> {
    check_version(r)
}

/// Sends `req` to EC2 through `client` (SigV4-signed form POST) and parses its response; AWS's
/// error document becomes [`Error::Api`] with AWS's code.
pub fn call<R: Ec2Request>(client: &crate::http::Client, req: &R) -> crate::Result<R::Response> {
    let form = form_encode(&encode_request(req));
    let resp = client.send(
        "ec2",
        R::ACTION,
        "POST",
        "/",
        &[(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8".into(),
        )],
        form.as_bytes(),
    )?;
    let body = String::from_utf8_lossy(&resp.body);
    match parse_response::<R::Response>(&body) {
        Ok((r, _)) => Ok(r),
        Err(e @ Error::Api { .. }) => Err(e),
        Err(_) if !resp.is_success() => Err(Error::Api {
            service: "ec2",
            action: R::ACTION.to_string(),
            code: format!("HTTP {}", resp.status),
            message: crate::http::snippet(&resp.body),
        }),
        Err(e) => Err(e),
    }
}
