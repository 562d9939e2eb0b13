//! A sandbox's output as HTML: every byte escaped; SGR colour and bold sequences (`ESC [ … m`)
//! become styled spans, and every other control or escape sequence (titles, cursor moves,
//! hyperlinks, bells) is shown as visible text (`␛]0;title␇`) and does nothing. The run page's
//! script (assets/app.js) does the same for output as it streams.

use maud::{Markup, html};

/// The style a run of text is in.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Style {
    /// 0–15: the 8 colours and their bright forms.
    foreground: Option<u8>,
    bold: bool,
}

impl Style {
    fn apply(&mut self, parameters: &str) {
        let mut codes = parameters.split(';').map(|code| code.parse::<u16>().unwrap_or(0));
        while let Some(code) = codes.next() {
            match code {
                0 => *self = Style::default(),
                1 => self.bold = true,
                22 => self.bold = false,
                30..=37 => self.foreground = Some((code - 30) as u8),
                39 => self.foreground = None,
                90..=97 => self.foreground = Some((code - 90 + 8) as u8),
                // 256 colours (`38;5;N`, of which the first 16 are the classes') and true colour
                // (`38;2;R;G;B`), and the same for the background (48), which is not shown: their
                // numbers are not codes of their own (found by a new-user trial: `38;5;1` was
                // bold, `48;5;32` green).
                38 | 48 => {
                    let colour = match codes.next() {
                        Some(5) => codes.next().filter(|colour| *colour < 16),
                        Some(2) => {
                            codes.by_ref().take(3).for_each(drop);
                            None
                        }
                        _ => None,
                    };
                    if code == 38 {
                        self.foreground = colour.map(|colour| colour as u8);
                    }
                }
                _ => {}
            }
        }
    }

    fn class(&self) -> String {
        let mut classes = Vec::new();
        if let Some(colour) = self.foreground {
            classes.push(format!("ansi-{colour}"));
        }
        if self.bold {
            classes.push("ansi-bold".to_owned());
        }
        classes.join(" ")
    }
}

/// A control character as its visible picture (U+2400…); ESC is `␛`, DEL `␡`.
fn picture(control: char) -> char {
    match control {
        '\u{7f}' => '\u{2421}',
        c if (c as u32) < 0x20 => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
        c => c,
    }
}

fn visible(text: &str) -> String {
    text.chars().map(|c| if c == '\n' || c == '\t' { c } else { picture(c) }).collect()
}

/// Renders `output` (lossy UTF-8) as escaped HTML.
pub fn render(output: &[u8]) -> Markup {
    let text = String::from_utf8_lossy(output);
    let mut pieces: Vec<(Style, String)> = Vec::new();
    let mut style = Style::default();
    let push = |style: Style, text: String, pieces: &mut Vec<(Style, String)>| match pieces.last_mut() {
        Some((last, existing)) if *last == style => existing.push_str(&text),
        _ => pieces.push((style, text)),
    };
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '\u{1b}' && matches!(chars.peek(), Some((_, '['))) {
            chars.next();
            let start = at + 2;
            let mut end = start;
            let mut last = None;
            for (index, next) in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&next) {
                    end = index;
                    last = Some(next);
                    break;
                }
                end = index + next.len_utf8();
            }
            match last {
                Some('m') if text[start..end].chars().all(|p| p.is_ascii_digit() || p == ';') => {
                    style.apply(&text[start..end]);
                }
                // Cursor moves, erasing and the like: shown, not obeyed.
                Some(final_byte) => {
                    push(style, visible(&format!("\u{1b}[{}{final_byte}", &text[start..end])), &mut pieces)
                }
                None => push(style, visible(&text[at..]), &mut pieces),
            }
        } else if c == '\n' || c == '\t' || !c.is_control() {
            push(style, c.to_string(), &mut pieces);
        } else {
            push(style, picture(c).to_string(), &mut pieces);
        }
    }
    html! {
        @for (style, text) in &pieces {
            @if *style == Style::default() { (text) } @else { span class=(style.class()) { (text) } }
        }
    }
}

/// For tests: the HTML `render` makes.
#[cfg(test)]
fn html_of(output: &[u8]) -> String {
    render(output).into_string()
}

#[cfg(test)]
mod tests {
    use super::html_of;

    #[test]
    fn markup_in_output_is_text() {
        assert_eq!(html_of(b"<script>alert(1)</script>"), "&lt;script&gt;alert(1)&lt;/script&gt;");
    }

    #[test]
    fn a_title_sequence_is_shown_and_does_nothing() {
        assert_eq!(html_of(b"\x1b]0;title\x07done"), "\u{241b}]0;title\u{2407}done");
    }

    #[test]
    fn colours_become_spans_and_other_sequences_are_shown() {
        assert_eq!(html_of(b"\x1b[1;31mred\x1b[0m plain"), "<span class=\"ansi-1 ansi-bold\">red</span> plain");
        assert_eq!(html_of(b"\x1b[38;5;1mred\x1b[0m"), "<span class=\"ansi-1\">red</span>");
        assert_eq!(html_of(b"\x1b[48;5;32mon blue\x1b[0m"), "on blue");
        assert_eq!(html_of(b"\x1b[38;2;1;2;3mtrue\x1b[0m"), "true");
        assert_eq!(html_of(b"\x1b[38;5;200;1mbold\x1b[0m"), "<span class=\"ansi-bold\">bold</span>");
        assert_eq!(html_of(b"\x1b[2Jx"), "\u{241b}[2Jx");
        assert_eq!(html_of(b"a\r\nb"), "a\u{240d}\nb");
    }
}
