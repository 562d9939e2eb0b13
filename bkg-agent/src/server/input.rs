//! What a request brings: path parameters, query strings and bodies, each refused with the
//! API's JSON error. Bodies are size-limited, then parsed; broken JSON is a 400, well-formed JSON
//! with values that do not fit is a 422.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::Method;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::failure::Failure;
use crate::api_doc::Inputs;

/// Bodies of the auth endpoints and the like: a few names, a password.
pub const SMALL_BODY_BYTES: usize = bkg_schema::MAX_SMALL_BODY_BYTES;

/// Bodies of sandbox definitions: cave.yaml's, variables and all.
pub const DEFINITION_BODY_BYTES: usize = bkg_schema::MAX_DEFINITION_BODY_BYTES;

pub async fn json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, Failure> {
    let bytes = bytes(body, limit).await?;
    parse(&bytes)
}

/// A body that may be empty, which stands for `T::default()`.
pub async fn optional_json<T: DeserializeOwned + Default>(body: Body, limit: usize) -> Result<T, Failure> {
    let bytes = bytes(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(&bytes)
}

pub async fn bytes(body: Body, limit: usize) -> Result<axum::body::Bytes, Failure> {
    axum::body::to_bytes(body, limit).await.map_err(|_| Failure::too_large(limit))
}

/// Every body of the API is a JSON object, with each key once in each of its objects.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    let UniqueKeys(value) = serde_json::from_slice(bytes)
        .map_err(|error| Failure::bad_request(format!("invalid request body: {error}")))?;
    if !value.is_object() {
        return Err(Failure::invalid("the request body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|error| Failure::invalid(format!("invalid request body: {error}")))
}

/// `bytes` read as JSON, once: `Ok(None)` when they are no JSON at all, an error when one of its
/// objects names a key twice (`the key `id` comes twice at line 1 column 14`).
pub fn json_with_keys_once(bytes: &[u8]) -> Result<Option<serde_json::Value>, String> {
    match serde_json::from_slice::<UniqueKeys>(bytes) {
        Ok(UniqueKeys(value)) => Ok(Some(value)),
        // Syntax is `Syntax` or `Eof`; `Data` is the visitor's own refusal, the only one it has.
        Err(error) if error.classify() == serde_json::error::Category::Data => Err(error.to_string()),
        Err(_) => Ok(None),
    }
}

/// A JSON value whose objects name each key once. serde_json keeps the last of two, so
/// `{"code": A, "code": B}` would run B where a proxy or a log that read the first saw A.
struct UniqueKeys(serde_json::Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
        Ok(value.into())
    }

    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(value.into())
    }

    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(value.into())
    }

    fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
        Ok(value.into())
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(value.into())
    }

    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(value.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        let mut array = Vec::new();
        while let Some(UniqueKeys(item)) = items.next_element()? {
            array.push(item);
        }
        Ok(array.into())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("the key `{key}` comes twice")));
            }
            let UniqueKeys(value) = entries.next_value()?;
            object.insert(key, value);
        }
        Ok(object.into())
    }
}

/// A path parameter, refused as a 400 in the API's error shape when it cannot be read.
pub struct PathParam<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        percent_encoded(parts.uri.path())?;
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection| Failure::bad_request(rejection.body_text()))
    }
}

/// Refuses a path with a `%` that starts no escape (`run_%ZZ`): axum's decoding keeps it as it
/// is, and the parameter would name something that cannot exist (found by a new-user trial: a
/// 404 "no run run_%ZZ" where a parameter that cannot be read is a 400). The route's own
/// segments have no `%`, so any there is a parameter's.
fn percent_encoded(path: &str) -> Result<(), Failure> {
    let bytes = path.as_bytes();
    let broken = bytes.iter().enumerate().any(|(at, byte)| {
        *byte == b'%' && !bytes.get(at + 1..at + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    match broken {
        true => {
            Err(Failure::bad_request("a path parameter has a `%` that starts no percent-escape (`%` is written `%25`)"))
        }
        false => Ok(()),
    }
}

/// What each documented route takes, read once from the OpenAPI document.
static INPUTS: LazyLock<HashMap<(Method, String), Inputs>> = LazyLock::new(crate::api_doc::inputs);

/// The inputs of `route` (axum's: `{*path}` for the rest of a path, `{path}` in the document).
fn inputs_of(method: &Method, route: &str) -> Option<&'static Inputs> {
    INPUTS.get(&(method.clone(), route.replace("{*", "{")))
}

/// Whether the document gives `route` no request body (`POST …/stop`, `…/revoke`): routes it
/// does not describe (`/mcp`, `/ui`) read their bodies themselves.
pub fn takes_no_body(method: &Method, route: &str) -> bool {
    inputs_of(method, route).is_some_and(|inputs| !inputs.body)
}

/// The body sent to a route that takes none, which must be empty: whatever it said would be
/// dropped unread (found by a new-user trial: `POST …/revoke` with `garbage` revoked the key,
/// while `POST …/start` with it was a 400). `{}` is taken as no body, as clients that always send
/// a JSON object send it.
pub fn no_body(bytes: &[u8]) -> Result<(), Failure> {
    let text = bytes.trim_ascii();
    if text.is_empty()
        || serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text)
            .is_ok_and(|object| object.is_empty())
    {
        return Ok(());
    }
    Err(Failure::bad_request("this endpoint takes no body (send none, or `{}`)"))
}

/// Refuses a query string that names a parameter the route does not take, on every documented
/// route, those that read no query at all too (docs/api.md, "Errors"). `route` is axum's
/// (`{*path}` for the rest of a path, `{path}` in the document); routes the document does not
/// describe (`/mcp`, `/ui`) are left to their own handlers.
pub fn check_query_names(method: &Method, route: &str, query: Option<&str>) -> Result<(), Failure> {
    let Some(query) = query.filter(|query| !query.is_empty()) else {
        return Ok(());
    };
    let Some(Inputs { query: taken, .. }) = inputs_of(method, route) else {
        return Ok(());
    };
    let given: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|error| Failure::bad_request(format!("the query string: {error}")))?;
    let Some((unknown, _)) = given.iter().find(|(name, _)| !taken.contains(name)) else {
        return Ok(());
    };
    let takes = match taken.as_slice() {
        [] => "none".to_owned(),
        names => names.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", "),
    };
    Err(Failure::bad_request(format!(
        "the query string: {unknown}: unknown parameter `{unknown}`; this endpoint takes {takes}"
    )))
}

/// A query string, refused as a 400 in the API's error shape when it does not parse or names a
/// parameter the route does not take (a misspelt `limt` is not silently ignored).
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri).map(|axum::extract::Query(value)| Self(value)).map_err(
            |rejection| {
                let text = rejection.body_text();
                let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
                Failure::bad_request(format!("the query string: {detail}"))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_twice_in_any_object_is_refused_and_the_rest_reads_as_json() {
        let refused = |body: &str| parse::<serde_json::Value>(body.as_bytes()).err().map(|failure| failure.message);
        let twice = refused(r#"{"language":"python","code":"print(1)","code":"print(2)"}"#).unwrap_or_default();
        assert!(twice.contains("the key `code` comes twice"), "{twice}");
        let nested = refused(r#"{"env":{"A":"1","B":[{"x":1,"x":2}]}}"#).unwrap_or_default();
        assert!(nested.contains("the key `x` comes twice"), "{nested}");
        let read = json_with_keys_once(br#"{"id":1,"id":2}"#);
        assert!(read.as_ref().is_err_and(|why| why.starts_with("the key `id` comes twice")), "{read:?}");
        assert_eq!(json_with_keys_once(br#"{"id":1}"#), Ok(Some(serde_json::json!({ "id": 1 }))));
        assert_eq!(json_with_keys_once(b"{not json"), Ok(None));
        let body = r#"{"a":[1,-2,3.5,"s",null,true,{"b":{}}],"c":{"a":1},"u":18446744073709551615}"#;
        assert_eq!(parse::<serde_json::Value>(body.as_bytes()).ok(), serde_json::from_str(body).ok());
    }
}
