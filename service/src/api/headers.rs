//! Request header and query parsing, and the registry's own response headers.

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderMap};

use super::error::ApiError;
use crate::oci::{Digest, RepoName};
use crate::registry::{Error, RangeRequest};

pub const DOCKER_CONTENT_DIGEST: &str = "Docker-Content-Digest";
pub const DOCKER_UPLOAD_UUID: &str = "Docker-Upload-UUID";
pub const DOCKER_API_VERSION: &str = "Docker-Distribution-API-Version";
pub const OCI_SUBJECT: &str = "OCI-Subject";
pub const OCI_TAG: &str = "OCI-Tag";
pub const OCI_FILTERS_APPLIED: &str = "OCI-Filters-Applied";

/// The `Range` header of an upload response: `0-<last byte>`. An empty upload reports
/// `0-0`, as distribution does and Docker clients expect.
pub fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

pub fn upload_location(name: &RepoName, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

pub fn blob_location(name: &RepoName, digest: &Digest) -> String {
    format!("/v2/{name}/blobs/{digest}")
}

/// The query string as name/value pairs, repeated names kept.
pub fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect()
}

pub fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `Content-Length`, if sent and valid.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| Error::SizeInvalid("Content-Length is not a number".into()).into()),
    }
}

/// Whether the request carries a body at all (a length above zero, or chunked encoding).
pub fn has_body(headers: &HeaderMap) -> Result<bool, ApiError> {
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    Ok(chunked || content_length(headers)?.is_some_and(|n| n > 0))
}

/// The `Content-Range` of an upload chunk: `<start>-<end>`, inclusive. Some clients write it
/// the way responses do (`bytes 0-99/1000`); that is accepted too.
pub fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else { return Ok(None) };
    let invalid = || ApiError::from(Error::BlobUploadInvalid("Content-Range must be <start>-<end>".into()));
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let text = text.strip_prefix("bytes").map_or(text, |t| t.trim_start_matches([' ', '=']));
    let text = text.split_once('/').map_or(text, |(range, _total)| range);
    let (start, end) = text.split_once('-').ok_or_else(invalid)?;
    let parse = |s: &str| -> Result<u64, ApiError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        s.parse().map_err(|_| invalid())
    };
    let (start, end) = (parse(start)?, parse(end)?);
    if end < start {
        return Err(invalid());
    }
    Ok(Some((start, end)))
}

/// The `Range` header of a blob GET. Anything but one well-formed byte range is ignored, as
/// RFC 9110 allows, and the whole blob is sent.
pub fn range(headers: &HeaderMap) -> Option<RangeRequest> {
    let text = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let spec = text.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) { None } else { s.parse().ok() }
    };
    if start.trim().is_empty() {
        return Some(RangeRequest::Suffix(number(end)?));
    }
    let start = number(start)?;
    let end = if end.trim().is_empty() { None } else { Some(number(end)?) };
    Some(RangeRequest::From { start, end })
}

/// A digest from the path or query.
pub fn digest(value: &str) -> Result<Digest, ApiError> {
    value.parse::<Digest>().map_err(|e| Error::DigestInvalid(format!("invalid digest {value:?}: {e}")).into())
}

pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn with(name: HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn content_range_forms() {
        let cr = |v| content_range(&with(header::CONTENT_RANGE, v)).ok().flatten();
        assert_eq!(cr("0-99"), Some((0, 99)));
        assert_eq!(cr("bytes=5-9"), Some((5, 9)));
        assert_eq!(cr("bytes 5-9/100"), Some((5, 9)));
        assert!(content_range(&with(header::CONTENT_RANGE, "9-5")).is_err());
        assert!(content_range(&with(header::CONTENT_RANGE, "-5")).is_err());
        assert!(content_range(&with(header::CONTENT_RANGE, "a-b")).is_err());
        assert!(content_range(&HeaderMap::new()).expect("absent").is_none());
    }

    #[test]
    fn range_forms() {
        let r = |v| range(&with(header::RANGE, v));
        assert_eq!(r("bytes=0-9"), Some(RangeRequest::From { start: 0, end: Some(9) }));
        assert_eq!(r("bytes=7-"), Some(RangeRequest::From { start: 7, end: None }));
        assert_eq!(r("bytes=-3"), Some(RangeRequest::Suffix(3)));
        assert_eq!(r("bytes=0-1,4-5"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=x-1"), None);
    }

    #[test]
    fn empty_uploads_report_zero_zero() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(10), "0-9");
    }
}
