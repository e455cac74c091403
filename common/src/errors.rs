//! Rendering an error with its whole cause chain, for logs and /ready. A tokio-postgres
//! error displays only "db error"; what went wrong (SQLSTATE, message, detail, hint, the
//! constraint) is in its source, which `%error` never prints.

use std::error::Error;
use std::fmt;

use tokio_postgres::error::{DbError, SqlState};

/// `Display` for an error and every `source()` below it, on one line:
/// `database error: db error: ERROR 23514: new row ... (detail: ...; constraint: ...)`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rendered = String::new();
        let mut next: Option<&(dyn Error + 'static)> = Some(self.0);
        while let Some(error) = next {
            let text = match error.downcast_ref::<DbError>() {
                Some(db) => describe(db),
                None => error.to_string(),
            };
            // Many wrappers repeat their source in their own message ("database error: {0}");
            // printing it again would only add noise.
            if !rendered.ends_with(&text) {
                if !rendered.is_empty() {
                    rendered.push_str(": ");
                }
                rendered.push_str(&text);
            }
            next = error.source();
        }
        f.write_str(&rendered)
    }
}

/// PostgreSQL's error on one line: severity, SQLSTATE and message, then whatever of detail,
/// hint, table, column and constraint the server sent.
fn describe(db: &DbError) -> String {
    let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    let extras: Vec<String> = [
        ("detail", db.detail()),
        ("hint", db.hint()),
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|value| format!("{name}: {value}")))
    .collect();
    if !extras.is_empty() {
        text.push_str(&format!(" ({})", extras.join("; ")));
    }
    text
}

/// The SQLSTATE of the first PostgreSQL error in the chain, if there is one.
pub fn sqlstate<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a SqlState> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(db) = error.downcast_ref::<DbError>() {
            return Some(db.code());
        }
        if let Some(postgres) = error.downcast_ref::<tokio_postgres::Error>() {
            if let Some(code) = postgres.code() {
                return Some(code);
            }
        }
        next = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn every_cause_is_printed_once() {
        let error = Repeats(Inner(std::io::Error::other("connection reset")));
        assert_eq!(Chain(&error).to_string(), "outer: inner: connection reset");
        assert!(sqlstate(&error).is_none());
    }
}
