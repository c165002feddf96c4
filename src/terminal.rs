//! Text maas did not write, shown on a terminal: a server's error message, class names from a
//! model file or a server's metadata. Control characters in it would move the cursor, recolour
//! or clear the screen, or break a table's rows, and a server's message can be megabytes long;
//! so such text is escaped (and, inside an error line, shortened) before it is printed. JSON
//! output carries the text as it is (JSON escapes it itself).

use std::borrow::Cow;

/// `text` with every character a terminal would act on instead of showing written as an escape
/// (`\n`, `\r`, `\t`, else `\u{1b}`); borrowed when there is none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// Someone else's words as part of one error line: runs of whitespace (line breaks included)
/// become one space, other control characters are escaped, and at most `max` characters are
/// kept, the cut marked with "...".
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut kept = 0;
    let mut space = false;
    for c in text.trim().chars() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if kept >= max {
            out.push_str("...");
            return out;
        }
        if std::mem::take(&mut space) {
            out.push(' ');
            kept += 1;
        }
        push_escaped(&mut out, c);
        kept += 1;
    }
    out
}

/// Control characters (C0, DEL, C1) and the invisible marks that reorder text on screen
/// (bidirectional overrides and isolates), which could make a line read as something else.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if acts_on_terminal(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_kept() {
        assert!(matches!(
            escape("chat noir é"),
            Cow::Borrowed("chat noir é")
        ));
        assert_eq!(escape("a\u{1b}[2Jb\nc\td"), "a\\u{1b}[2Jb\\nc\\td");
        assert_eq!(
            escape("\u{9b}31m\u{7f}\u{202e}x"),
            "\\u{9b}31m\\u{7f}\\u{202e}x"
        );
    }

    #[test]
    fn one_line_joins_lines_escapes_and_shortens() {
        assert_eq!(
            one_line("  too\n\n many\r\nrequests  ", 100),
            "too many requests"
        );
        assert_eq!(one_line("red \u{1b}[31m!", 100), "red \\u{1b}[31m!");
        let long = "x".repeat(10_000_000);
        assert_eq!(one_line(&long, 5), "xxxxx...");
        assert_eq!(one_line("abcde", 5), "abcde");
    }
}
