//! Objects must come as JSON objects: serde's derived structs also take arrays (`[1, 2]` for
//! `{"a": 1, "b": 2}`), which the API's schema says are errors.

use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A struct field that must be an object.
pub fn object<'de, D: Deserializer<'de>, T: DeserializeOwned>(deserializer: D) -> Result<T, D::Error> {
    let map = Map::<String, Value>::deserialize(deserializer)?;
    T::deserialize(Value::Object(map)).map_err(D::Error::custom)
}

/// A list field whose items must be objects.
pub fn objects<'de, D: Deserializer<'de>, T: DeserializeOwned>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Vec::<Map<String, Value>>::deserialize(deserializer)?
        .into_iter()
        .map(|map| T::deserialize(Value::Object(map)).map_err(D::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::{LimitOverrides, RunRequest};

    #[test]
    fn nested_objects_given_as_arrays_are_refused() {
        let good: Result<RunRequest, _> =
            serde_json::from_str(r#"{"language":"python","code":"","limits":{"timeout_ms":5}}"#);
        assert_eq!(
            good.ok().map(|request| request.limits),
            Some(LimitOverrides { timeout_ms: Some(5), ..Default::default() })
        );
        for bad in [
            r#"{"language":"python","code":"","limits":[null, null]}"#,
            r#"{"language":"python","code":"","files":[["a", "b"]]}"#,
        ] {
            assert!(serde_json::from_str::<RunRequest>(bad).is_err(), "{bad}");
        }
    }
}
