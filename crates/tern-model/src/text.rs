//! Small text helpers shared by the error types of this crate.

/// Longest excerpt of user input quoted in an error message.
const MAX_QUOTED_CHARS: usize = 160;

/// Renders `s` for quoting inside a one-line error message: control
/// characters (newline, tab, escape...) are shown as Rust-style escapes and
/// very long input is cut with an ellipsis, so a message never spans lines.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_QUOTED_CHARS + 8));
    for (count, c) in s.chars().enumerate() {
        if count == MAX_QUOTED_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{one_line, MAX_QUOTED_CHARS};

    #[test]
    fn escapes_control_characters() {
        assert_eq!(one_line("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn truncates_long_input() {
        let long = "x".repeat(1000);
        let shown = one_line(&long);
        assert!(shown.ends_with('…'));
        assert_eq!(shown.chars().count(), MAX_QUOTED_CHARS + 1);
    }
}
