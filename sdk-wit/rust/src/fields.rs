use serde_json::{Map, Value};

use crate::record::json_kind;
use crate::TransformError;

/// Typed, error-reporting getters on a JSON object (e.g. from
/// [`Record::fields`](crate::Record::fields)).
///
/// Every failure is an `invalid-input` error that names the field, e.g.
/// "missing field `base_price`" or "field `quantity` must be an integer, got string".
///
/// A name containing dots (`"context.customer_tier"`) that is not itself a key
/// of the object is looked up as a path through nested objects.
pub trait FieldsExt {
    /// The field's value; `null` counts as missing.
    fn require(&self, name: &str) -> Result<&Value, TransformError>;

    fn require_f64(&self, name: &str) -> Result<f64, TransformError> {
        let v = self.require(name)?;
        v.as_f64().ok_or_else(|| wrong_type(name, "a number", v))
    }

    fn require_i64(&self, name: &str) -> Result<i64, TransformError> {
        let v = self.require(name)?;
        v.as_i64().ok_or_else(|| wrong_type(name, "an integer", v))
    }

    fn require_str(&self, name: &str) -> Result<&str, TransformError> {
        let v = self.require(name)?;
        v.as_str().ok_or_else(|| wrong_type(name, "a string", v))
    }

    fn require_bool(&self, name: &str) -> Result<bool, TransformError> {
        let v = self.require(name)?;
        v.as_bool().ok_or_else(|| wrong_type(name, "a boolean", v))
    }

    fn require_object(&self, name: &str) -> Result<&Map<String, Value>, TransformError> {
        let v = self.require(name)?;
        v.as_object()
            .ok_or_else(|| wrong_type(name, "an object", v))
    }
}

fn wrong_type(name: &str, wanted: &str, got: &Value) -> TransformError {
    let got = match got {
        Value::Number(n) if wanted == "an integer" => {
            if n.is_f64() {
                "a non-integer number".to_string()
            } else {
                "an out-of-range integer".to_string()
            }
        }
        other => json_kind(other).to_string(),
    };
    TransformError::invalid_input(format!("field `{name}` must be {wanted}, got {got}"))
}

fn lookup<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = map.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let mut current = map.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

impl FieldsExt for Map<String, Value> {
    fn require(&self, name: &str) -> Result<&Value, TransformError> {
        match lookup(self, name) {
            Some(Value::Null) | None => Err(TransformError::invalid_input(format!(
                "missing field `{name}`"
            ))),
            Some(v) => Ok(v),
        }
    }
}

impl FieldsExt for Value {
    fn require(&self, name: &str) -> Result<&Value, TransformError> {
        match self {
            Value::Object(map) => map.require(name),
            other => Err(TransformError::invalid_input(format!(
                "cannot read field `{name}`: value is {}, not an object",
                json_kind(other)
            ))),
        }
    }
}
