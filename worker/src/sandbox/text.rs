//! Guest text on its way to a log line or a Kafka header. A guest is
//! untrusted: what it prints may carry terminal escapes (recolouring or
//! rewriting an operator's terminal), bidi overrides (text that reads
//! differently than it is), raw newlines (a fake log line), or megabytes.
//! Everything here turns such text into a plain, bounded value.

/// Bytes a guest's text may occupy in `pw.error.message` (the whole header is
/// kept within [`MAX_ERROR_MESSAGE`]).
pub const MAX_GUEST_TEXT: usize = 3 * 1024;
/// Of [`MAX_GUEST_TEXT`], the bytes kept from the start: the first line of a
/// message. The rest comes from the end, where a traceback names the
/// exception and where a panic lands after a flood of output.
pub const GUEST_TEXT_HEAD: usize = 1024;
/// Bound of the dead letter's `pw.error.message` header.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// ANSI escape sequences and C0 controls removed (anstream's stripper), any
/// control character left (C1) and bidi controls replaced by U+FFFD. Newlines and tabs survive when
/// `keep_newlines`; otherwise a newline becomes the two characters `\n`, so
/// a log line stays one line.
pub fn sanitize(s: &str, keep_newlines: bool) -> String {
    let stripped = anstream::adapter::strip_str(s).to_string();
    let mut out = String::with_capacity(stripped.len());
    for c in stripped.chars() {
        match c {
            '\t' => out.push(c),
            '\n' if keep_newlines => out.push(c),
            '\n' => out.push_str("\\n"),
            // A CR alone would let a terminal overwrite the line's start.
            '\r' => {}
            c if c.is_control() || is_bidi_control(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` if it fits in `max` bytes, else its first `head` bytes and its last
/// bytes, with the number of bytes cut between them, at most `max` bytes in
/// all (`head` < `max`).
pub fn head_and_tail(s: &str, max: usize, head: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    // The marker's own length depends on the number it carries; the largest
    // it can be for this input is reserved.
    let marker_room = marker(s.len()).len();
    let tail = max.saturating_sub(head + marker_room);
    let head_end = floor_char_boundary(s, head);
    let tail_start = ceil_char_boundary(s, s.len() - tail);
    let cut = tail_start - head_end;
    format!("{}{}{}", &s[..head_end], marker(cut), &s[tail_start..])
}

fn marker(cut: usize) -> String {
    format!("\n… [{cut} bytes cut] …\n")
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_controls_are_removed() {
        let s = "\x1b[31mred\x1b[0m \x1b]0;title\x07ok\x08\u{202E}txt\r\nnext\tcol\u{9b}";
        // The backspace goes with the escapes; the bidi override and the
        // C1 CSI are replaced.
        assert_eq!(sanitize(s, true), "red ok\u{FFFD}txt\nnext\tcol\u{FFFD}");
        assert_eq!(
            sanitize("a\nb", false),
            "a\\nb",
            "a newline cannot start a fake log line"
        );
    }

    #[test]
    fn long_text_keeps_head_and_tail_within_the_bound() {
        let s = format!(
            "first line\n{}\nZeroDivisionError: division by zero",
            "é".repeat(5000)
        );
        let b = head_and_tail(&s, 3072, 1024);
        assert!(b.len() <= 3072, "{}", b.len());
        assert!(b.starts_with("first line\n"), "{b}");
        assert!(b.ends_with("ZeroDivisionError: division by zero"), "{b}");
        let cut: usize = b
            .split("… [")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("marker names the bytes cut");
        let marker_len = marker(cut).len();
        assert_eq!(
            b.len() - marker_len + cut,
            s.len(),
            "the marker counts exactly what is cut"
        );
        assert_eq!(head_and_tail("short", 3072, 1024), "short");
    }
}
