//! Reading JSON request bodies: a size limit (413), JSON syntax (400), then the shape of the
//! request type with the exact field that does not fit (422).

use axum::{
    extract::Request,
    http::header::{CONTENT_LENGTH, CONTENT_TYPE},
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Reads the body of `request` (at most `limit` bytes) as `T`, returning the raw JSON too
/// (idempotency keys hash it).
pub async fn json<T: DeserializeOwned>(
    request: Request,
    limit: usize,
) -> Result<(T, serde_json::Value), ApiError> {
    let headers = request.headers();
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(format!("{e}")))?;
    // serde's derived structs also accept a JSON array, filling fields by position; a request
    // is an object, full stop.
    if !value.is_object() {
        return Err(ApiError::field("body", "must be a JSON object"));
    }
    let typed = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        ApiError::field(field_of(&path, &message), message)
    })?;
    Ok((typed, value))
}

/// The field a serde error is about. For a missing field serde reports the parent's path, so
/// the missing name is taken from the message.
fn field_of(path: &str, message: &str) -> String {
    let parent = if path == "." { "" } else { path };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (parent, missing) {
        ("", Some(name)) => name.to_owned(),
        (p, Some(name)) => format!("{p}.{name}"),
        ("", None) => "body".to_owned(),
        (p, None) => p.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::field_of;

    #[test]
    fn names_missing_and_wrong_fields() {
        assert_eq!(field_of(".", "missing field `kind`"), "kind");
        assert_eq!(
            field_of("jobs[2]", "missing field `kind` at line 1"),
            "jobs[2].kind"
        );
        assert_eq!(
            field_of("jobs[0].priority", "invalid type"),
            "jobs[0].priority"
        );
        assert_eq!(
            field_of(".", "invalid type: string, expected struct"),
            "body"
        );
    }
}
