//! The correlation engine's error: a configuration value out of range.

/// An error of the correlation engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A configuration value had the wrong shape or value.
    #[error("invalid argument {name}: {reason}")]
    BadArgument { name: String, reason: String },
}

impl Error {
    pub fn bad_argument(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Result type of the correlation engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(
            Error::bad_argument("window_ms", "must be between 1 and 86400000, got 0").to_string(),
            "invalid argument window_ms: must be between 1 and 86400000, got 0"
        );
    }
}
