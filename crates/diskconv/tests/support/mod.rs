//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

pub(crate) mod stream;

/// An error and its sources on one line, as a user reads them.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}
