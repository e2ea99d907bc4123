//! JSON request bodies: content type, size limit and field-naming parse errors.

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::error::ApiError;

/// Extracts a JSON body of at most `limit` bytes: 415 unless the content type is
/// JSON, 413 when over the limit (checked while reading, so a missing or lying
/// `Content-Length` does not help), 400 naming the field that does not parse.
pub fn json<T>(limit: u64) -> impl Filter<Extract = (T,), Error = Rejection> + Clone
where
    T: DeserializeOwned + Send,
{
    warp::header::optional::<String>("content-type")
        .and_then(|content_type: Option<String>| async move {
            if content_type.as_deref().is_some_and(is_json) {
                Ok(())
            } else {
                Err(warp::reject::custom(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as application/json",
                )))
            }
        })
        .untuple_one()
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, body| async move {
            if length.is_some_and(|l| l > limit) {
                return Err(warp::reject::custom(too_large(limit)));
            }
            let bytes = read_limited(body, limit)
                .await
                .map_err(warp::reject::custom)?;
            parse(&bytes).map_err(warp::reject::custom)
        })
}

/// Like [`json`], but never rejects: the error is handed to the handler, so it can
/// first check what must come first (the path, the token) and report that instead.
pub fn json_deferred<T>(
    limit: u64,
) -> impl Filter<Extract = (Result<T, ApiError>,), Error = std::convert::Infallible> + Clone
where
    T: DeserializeOwned + Send,
{
    json::<T>(limit)
        .map(Ok)
        .or_else(|rejection: Rejection| async move {
            let error = rejection
                .find::<ApiError>()
                .cloned()
                .unwrap_or_else(|| ApiError::bad_request("the request body could not be read"));
            Ok::<_, std::convert::Infallible>((Err(error),))
        })
}

fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is over the limit of {limit} bytes"),
    )
}

async fn read_limited<S, B>(body: S, limit: u64) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| ApiError::bad_request("the request body could not be read"))?;
        if (collected.len() + chunk.remaining()) as u64 > limit {
            return Err(too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(collected)
}

/// Parses JSON, naming the field at fault in the error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {inner}"),
            )
        } else if path == "." {
            // serde names a missing or unknown field only inside its message.
            let message = inner.to_string();
            let field = message.split('`').nth(1).filter(|_| {
                message.starts_with("missing field") || message.starts_with("unknown field")
            });
            match field {
                Some(field) if message.starts_with("missing") => {
                    ApiError::invalid_field(field, "is required")
                }
                Some(field) => ApiError::invalid_field(field, "is not a known field"),
                None => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message),
            }
        } else {
            ApiError::invalid_field(&path, &inner.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Message {
        #[allow(dead_code)]
        text: String,
    }

    fn route() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
        json::<Message>(32)
            .map(|_| "ok".to_owned())
            .recover(|r: Rejection| async move {
                let e = r
                    .find::<ApiError>()
                    .cloned()
                    .unwrap_or_else(ApiError::internal);
                Ok::<_, std::convert::Infallible>(format!("{} {}", e.status.as_u16(), e.message))
            })
            .unify()
    }

    async fn call(content_type: Option<&str>, body: &str) -> String {
        let mut request = warp::test::request().method("POST").body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.filter(&route()).await.expect("infallible")
    }

    #[tokio::test]
    async fn accepts_json() {
        assert_eq!(
            call(Some("application/json"), r#"{"text":"hi"}"#).await,
            "ok"
        );
        assert_eq!(
            call(Some("Application/JSON; charset=utf-8"), r#"{"text":"hi"}"#).await,
            "ok"
        );
    }

    #[tokio::test]
    async fn wrong_or_missing_content_type_is_415() {
        assert!(
            call(Some("text/plain"), r#"{"text":"hi"}"#)
                .await
                .starts_with("415")
        );
        assert!(call(None, r#"{"text":"hi"}"#).await.starts_with("415"));
    }

    #[tokio::test]
    async fn over_the_limit_is_413() {
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(64));
        assert!(
            call(Some("application/json"), &long)
                .await
                .starts_with("413")
        );
    }

    #[tokio::test]
    async fn bad_json_and_bad_fields_are_400_naming_the_field() {
        assert!(call(Some("application/json"), "{").await.starts_with("400"));
        let wrong_type = call(Some("application/json"), r#"{"text":5}"#).await;
        assert!(wrong_type.starts_with("400 text:"), "{wrong_type}");
        let missing = call(Some("application/json"), "{}").await;
        assert!(
            missing.starts_with("400") && missing.contains("text"),
            "{missing}"
        );
    }
}
