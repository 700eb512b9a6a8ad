//! API keys, as vLLM's and llama.cpp's OpenAI-compatible servers take them: with keys set, every API
//! route wants `Authorization: Bearer KEY` (what the openai clients send from their `api_key`); the
//! probes (`/health`, `/ready`, `/v2/health/*`) and `/metrics` stay open for the orchestrator. A missing
//! or wrong key is a 401 in OpenAI's error shape (`{"error": …}` on the `/v2` routes). Keys are
//! compared in constant time and never logged or echoed.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lcm_core::{Error, Result};
use serde_json::json;

use super::metrics::Metrics;

/// The keys a request may present (one per line of `--api-key-file`, so a key can be rotated without
/// a gap: add the new line, move the clients, remove the old one).
#[derive(Clone)]
pub struct ApiKeys(Vec<Vec<u8>>);

// Never print a key, not even in a debug dump of the config.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl ApiKeys {
    /// The keys of `--api-key-file FILE` (one per line; blank lines skipped), else of `LCM_API_KEY`
    /// (`env`: its value when set); `None` when neither is given: the server is open.
    pub fn load(file: Option<&Path>, env: Option<String>) -> Result<Option<ApiKeys>> {
        if let Some(path) = file {
            let what = format!("--api-key-file {}", path.display());
            let text =
                std::fs::read_to_string(path).map_err(|e| Error::invalid(&what, format!("cannot read it: {e}")))?;
            return ApiKeys::parse(&what, &text).map(Some);
        }
        match env {
            None => Ok(None),
            Some(v) => ApiKeys::parse("LCM_API_KEY", &v).map(Some),
        }
    }

    /// Keys from `text`, one per line; an error names `what` and the line, never the key.
    pub fn parse(what: &str, text: &str) -> Result<ApiKeys> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() {
                continue;
            }
            // What an HTTP header carries after `Bearer `: visible ASCII, no spaces.
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::invalid(
                    what,
                    format!("line {}: a key is printable ASCII without spaces (the key is not shown)", n + 1),
                ));
            }
            keys.push(key.as_bytes().to_vec());
        }
        if keys.is_empty() {
            return Err(Error::invalid(what, "empty: expected a key (one per line)"));
        }
        Ok(ApiKeys(keys))
    }

    /// Whether `authorization` is `Bearer KEY` with one of the keys.
    pub fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(given) = authorization.and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) else {
            return false;
        };
        // Every key is compared, each in constant time: the answer's timing says nothing about which
        // bytes matched.
        self.0.iter().fold(false, |ok, key| ok | constant_time_eq(given, key))
    }
}

/// `given == key` in a time that depends on `key`'s length only.
fn constant_time_eq(given: &[u8], key: &[u8]) -> bool {
    let mut diff = (given.len() != key.len()) as u8;
    for (i, &k) in key.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ k;
    }
    std::hint::black_box(diff) == 0
}

/// The middleware: the request goes on with a key, else 401 here.
pub async fn require_key(
    State((keys, metrics)): State<(Arc<ApiKeys>, Arc<Metrics>)>,
    req: Request,
    next: Next,
) -> Response {
    if keys.accepts(req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    metrics.request("(unauthorized)", 401);
    let msg = "missing or wrong API key: send `Authorization: Bearer KEY` (lcm serve --api-key-file / LCM_API_KEY)";
    let body = if req.uri().path().starts_with("/v2") {
        json!({ "error": msg })
    } else {
        // OpenAI's shape and code for this refusal, which its clients raise as AuthenticationError.
        json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "field": null,
                         "code": "invalid_api_key"}})
    };
    let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_whole_and_errors_never_show_them() {
        let keys = ApiKeys::parse("--api-key-file k", "\n sk-one \nsk-two\n").unwrap();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(keys.accepts(Some(&h("Bearer sk-one"))));
        assert!(keys.accepts(Some(&h("Bearer sk-two"))));
        for wrong in ["Bearer sk-on", "Bearer sk-one1", "Bearer ", "sk-one", "Basic sk-one", "Bearer sk-ONE"] {
            assert!(!keys.accepts(Some(&h(wrong))), "{wrong}");
        }
        assert!(!keys.accepts(None));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");

        let e = ApiKeys::parse("--api-key-file k", " \n\n").unwrap_err().to_string();
        assert!(e.contains("--api-key-file k") && e.contains("empty"), "{e}");
        let e = ApiKeys::parse("LCM_API_KEY", "secret part").unwrap_err().to_string();
        assert!(e.contains("LCM_API_KEY") && e.contains("line 1") && !e.contains("secret"), "{e}");
        let e = ApiKeys::load(Some(Path::new("/nonexistent/keys")), None).unwrap_err().to_string();
        assert!(e.contains("--api-key-file /nonexistent/keys"), "{e}");
        assert!(ApiKeys::load(None, None).unwrap().is_none());
    }
}
