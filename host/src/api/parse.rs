//! Request bodies to typed values: the whole body must be one JSON value, a field of the
//! wrong type is named, and unknown fields are accepted and ignored as the field's servers
//! do (logged at debug so an operator can see what a client sends in vain).

use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Parses `body` as one `T`. Empty, malformed or trailing input is 400 without a param; a
/// value of the wrong type is 400 naming its path (`sampling_params.temperature`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "request body is empty; send JSON"));
    }
    // A derived struct would take a list field by field, in order: a body is one object.
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b != b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be one JSON object (a list is a batch, which is not supported)",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let mut ignored = Vec::new();
    let value = {
        let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
        serde_ignored::deserialize(tracked, |path| ignored.push(path.to_string()))
    };
    let value: T = value.map_err(|e: serde_json::Error| {
        if e.is_syntax() || e.is_eof() {
            return ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"));
        }
        let path = track.path().to_string();
        let err = ApiError::new(StatusCode::BAD_REQUEST, format!("{path}: {e}"));
        if path == "." { err } else { err.with_param(path) }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON: {e}: the body must hold exactly one JSON value"),
        )
    })?;
    if !ignored.is_empty() {
        tracing::debug!(fields = ?ignored, "ignored unknown request fields");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct Body {
        text: Option<String>,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Deserialize, Debug, Default)]
    struct Inner {
        n: Option<u32>,
    }

    #[test]
    fn one_value_only_and_wrong_types_are_named() {
        assert!(parse_json::<Body>(br#"{"text": "a", "extra": [1, {"x": 2}]}"#).is_ok());
        let e = parse_json::<Body>(br#"{"text": "a"} {"text": "b"}"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.param), (400, None));
        assert!(e.message.contains("one JSON value"), "{}", e.message);
        let e = parse_json::<Body>(br#"{"text": "a"}garbage"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        let e = parse_json::<Body>(br#"{"inner": {"n": "x"}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("inner.n"));
        let e = parse_json::<Body>(br#"{"text": 4}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("text"));
        let e = parse_json::<Body>(br#"{"text": "#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.param), (400, None));
        assert!(parse_json::<Body>(b"").is_err());
        let e = parse_json::<Body>(br#" ["a"]"#).unwrap_err();
        assert!(e.message.contains("one JSON object"), "{}", e.message);
        let ok = parse_json::<Body>(b" {\"text\": \"a\"}\n ").unwrap();
        assert_eq!((ok.text.as_deref(), ok.inner.n), (Some("a"), None));
    }
}
