use std::fmt;

/// Why a transform refused a record. Either way the worker sends the input
/// record to the dead-letter topic with this message in its headers.
///
/// Mirrors the WIT variant `pipeline:transform/types.transform-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformError {
    /// The record itself is bad (not JSON, a field missing, a value out of range, ...).
    InvalidInput(String),
    /// The function failed for another reason (a bug, a dependency that failed, ...).
    Failed(String),
}

impl TransformError {
    /// `invalid-input`: the record itself is bad.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        TransformError::InvalidInput(message.into())
    }

    /// `failed`: the function failed for a reason other than the record's content.
    pub fn failed(message: impl Into<String>) -> Self {
        TransformError::Failed(message.into())
    }

    /// The message carried by either case.
    pub fn message(&self) -> &str {
        match self {
            TransformError::InvalidInput(m) | TransformError::Failed(m) => m,
        }
    }

    /// `true` for [`TransformError::InvalidInput`].
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, TransformError::InvalidInput(_))
    }
}

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransformError::InvalidInput(m) => write!(f, "invalid input: {m}"),
            TransformError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for TransformError {}

/// Lets `?` turn a plain message into a `failed` error.
impl From<String> for TransformError {
    fn from(message: String) -> Self {
        TransformError::Failed(message)
    }
}

impl From<&str> for TransformError {
    fn from(message: &str) -> Self {
        TransformError::Failed(message.to_owned())
    }
}
