//! The bearer token that guards admin routes (ADMIN_TOKEN). Compared in constant time and
//! never logged; without a configured token the admin routes are disabled.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminAuthError {
    #[error("admin routes are disabled: ADMIN_TOKEN is not set")]
    Disabled,
    #[error("missing or wrong bearer token")]
    Unauthorized,
}

/// The configured token. Debug output never shows it.
#[derive(Clone, Default)]
pub struct AdminToken(Option<String>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "AdminToken(set)" } else { "AdminToken(unset)" })
    }
}

impl AdminToken {
    /// An empty string counts as unset: an empty token would be guessable.
    pub fn new(token: Option<String>) -> Self {
        Self(token.filter(|t| !t.is_empty()))
    }

    /// Checks an `Authorization` header value of the form `Bearer <token>`.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), AdminAuthError> {
        let Some(expected) = &self.0 else {
            return Err(AdminAuthError::Disabled);
        };
        let presented = authorization.and_then(|value| value.strip_prefix("Bearer ")).unwrap_or("");
        if constant_time_eq::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(AdminAuthError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        let token = AdminToken::new(Some("s3cret".into()));
        assert_eq!(token.check(Some("Bearer s3cret")), Ok(()));
        assert_eq!(token.check(Some("Bearer s3cre")), Err(AdminAuthError::Unauthorized));
        assert_eq!(token.check(Some("s3cret")), Err(AdminAuthError::Unauthorized));
        assert_eq!(token.check(None), Err(AdminAuthError::Unauthorized));
        assert_eq!(AdminToken::new(None).check(Some("Bearer x")), Err(AdminAuthError::Disabled));
        assert_eq!(AdminToken::new(Some(String::new())).check(Some("Bearer ")), Err(AdminAuthError::Disabled));
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
