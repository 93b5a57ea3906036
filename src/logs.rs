//! How kproxy's own output reads to an operator: whether log lines carry ANSI colour, and an
//! error with its causes as one line.
//!
//! Invariants: colour only when stderr is a terminal and `NO_COLOR` is unset or empty
//! (no-color.org), so files, pipes, `kubectl logs` and journald get plain text; an error's
//! chain names each cause once, however many of the error types along it already print their
//! source in their own message. Both are pure.

use std::error::Error;
use std::ffi::OsStr;

/// Whether log lines get ANSI colour: stderr is a terminal and `NO_COLOR` (its value as read
/// from the environment) is unset or empty.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// `error` and its causes, `: `-separated, leaving out a cause whose text the line already
/// holds (an error type that prints its source, then reports it as its `source()` too) and
/// causes with no text.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message may or may not include its source, as thiserror's
    /// `#[error("...: {0}")]` with `#[source]` does.
    #[derive(Debug)]
    struct Step {
        message: String,
        source: Option<Box<Step>>,
    }

    impl std::fmt::Display for Step {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl Error for Step {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref().map(|s| s as &(dyn Error + 'static))
        }
    }

    fn step(message: &str, source: Option<Step>) -> Step {
        Step {
            message: message.to_owned(),
            source: source.map(Box::new),
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        // As `--kubeconfig /nonexistent` fails: kproxy's error and kube's both print their source.
        let io = step("No such file or directory (os error 2)", None);
        let kube = step(
            "failed to read kubeconfig from '\"/nonexistent\"': No such file or directory (os error 2)",
            Some(io),
        );
        let ours = step(
            &format!("reading kubeconfig /nonexistent: {kube}"),
            Some(kube),
        );
        let top = step("connecting to the Kubernetes API", Some(ours));
        assert_eq!(
            chain(&top),
            "connecting to the Kubernetes API: reading kubeconfig /nonexistent: failed to read \
             kubeconfig from '\"/nonexistent\"': No such file or directory (os error 2)"
        );
    }

    #[test]
    fn causes_not_in_the_message_are_appended_in_order_and_empty_ones_skipped() {
        let e = step(
            "cleaning up",
            Some(step("", Some(step("permission denied", None)))),
        );
        assert_eq!(chain(&e), "cleaning up: permission denied");
        assert_eq!(chain(&step("alone", None)), "alone");
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
