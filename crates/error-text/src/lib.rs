//! One line for an error and its causes: `a: b: c`, for condition messages, Events, logs and
//! reports, the same wherever vm-import prints one.
//!
//! A cause whose text the line already holds is left out: many libraries (hyper, rustls, reqwest)
//! repeat their source's text in their own, and a condition message saying it twice reads as two
//! failures. `anyhow`'s `{:#}` would repeat them, hence this function.

/// The error and its sources on one line, each text once.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !more.is_empty() && !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |inner, text| Some(Layer(text, inner.map(Box::new))))
            .unwrap_or(Layer("", None))
    }

    #[test]
    fn causes_are_joined_in_order() {
        let error = layers(&["exporting disk 0", "reading the lease", "connection reset"]);
        assert_eq!(
            chain(&error),
            "exporting disk 0: reading the lease: connection reset"
        );
    }

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let error = layers(&["request failed: timed out", "timed out", "", "os error 110"]);
        assert_eq!(chain(&error), "request failed: timed out: os error 110");
    }
}
