//! Text from the farm (a collection's name, a failure message, a worker's
//! name or log) made safe to print in a terminal. Any of it may come from
//! another user or a hostile client: an ESC starts a control sequence that
//! can set the window title, clear the screen or write the clipboard
//! (OSC 52), BEL rings, and bidirectional overrides make a line read other
//! than it is. Each such character is shown as `\u{…}` instead.

/// Lets a closed stdout end the process quietly, as it does any Unix tool
/// (`farmctl workers | head -2`): Rust ignores SIGPIPE, so `println!` to a
/// closed pipe panics. This turns that one panic into exit status 141 (what
/// a shell reports for a death by SIGPIPE) with nothing printed. SIGPIPE
/// itself stays ignored: sockets are written with `writev`, which would
/// raise it whenever a peer closes a connection.
pub fn end_quietly_on_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload().downcast_ref::<String>().map(String::as_str).or_else(|| info.payload().downcast_ref::<&str>().copied()).unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info)
    }));
}

/// `text` with every control and bidirectional-formatting character
/// escaped: for one-line fields (names, messages).
pub fn shown(text: &str) -> String {
    escape(text, |_| false)
}

/// [`shown`] for multi-line text (a log): newlines and tabs are kept.
pub fn shown_lines(text: &str) -> String {
    escape(text, |c| c == '\n' || c == '\t')
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> String {
    if !text.chars().any(|c| dangerous(c) && !keep(c)) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if dangerous(c) && !keep(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// C0 and C1 controls, DEL, and the characters that reorder or hide text:
/// bidirectional embeddings, overrides and isolates, marks, and the
/// zero-width joiners and spaces.
fn dangerous(c: char) -> bool {
    c.is_control() || matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_shown_not_obeyed() {
        assert_eq!(shown("Water Lilies × starry_night"), "Water Lilies × starry_night");
        assert_eq!(shown("a\u{1b}]0;owned\u{7}b"), "a\\u{1b}]0;owned\\u{7}b", "a window-title sequence");
        assert_eq!(shown("\u{1b}]52;c;ZXZpbA==\u{7}"), "\\u{1b}]52;c;ZXZpbA==\\u{7}", "a clipboard write");
        assert_eq!(shown("\u{1b}[2J"), "\\u{1b}[2J", "clear screen");
        assert_eq!(shown("exe.\u{202e}gpj"), "exe.\\u{202e}gpj", "a right-to-left override");
        assert_eq!(shown("a\u{9b}b\u{7f}"), "a\\u{9b}b\\u{7f}", "C1 CSI and DEL");
        assert_eq!(shown("two\nlines"), "two\\u{a}lines", "a one-line field stays one line");
        assert_eq!(shown_lines("two\n\tlines\u{1b}[31m"), "two\n\tlines\\u{1b}[31m");
    }
}
