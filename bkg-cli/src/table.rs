//! The tables of `ls`, `keys ls`, `runs ls` and `audit tail`: plain columns as docker prints
//! them, wrapped to the terminal's width when stdout is one.

use std::io::IsTerminal;

use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement, Table, presets};

/// The width to fit: `COLUMNS` when set, else the terminal's; none when stdout is not a terminal
/// (a pipe gets whole lines).
pub fn width() -> Option<u16> {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|value| value.parse::<u16>().ok()) {
        return Some(columns);
    }
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    terminal_size::terminal_size_of(&stdout).map(|(terminal_size::Width(columns), _)| columns)
}

/// Renders `rows` under `headers`, the columns at `right` aligned right, each line ending in a
/// newline without trailing blanks. The last column is the one that wraps when space is short.
pub fn render(
    headers: &[&str],
    right: &[usize],
    rows: impl IntoIterator<Item = Vec<String>>,
    width: Option<u16>,
) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING).set_header(headers.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    match width {
        Some(width) => {
            table.set_content_arrangement(ContentArrangement::Dynamic).set_width(width);
        }
        None => {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    let last = headers.len().saturating_sub(1);
    for (index, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if index == last { 0 } else { 2 }));
        if right.contains(&index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
        // Every column but the last keeps its whole content: names and ids are not to be cut.
        if index != last {
            column.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_long_names_and_the_last_one_wraps() {
        let rows = vec![
            vec!["a-very-long-sandbox-name".to_owned(), "1".to_owned(), "/srv/x".to_owned()],
            vec!["b".to_owned(), "12345".to_owned(), "/srv/a/much/longer/project/path".to_owned()],
        ];
        let text = render(&["NAME", "N", "PROJECT"], &[1], rows.clone(), None);
        assert_eq!(
            text,
            "NAME                          N  PROJECT\n\
             a-very-long-sandbox-name      1  /srv/x\n\
             b                         12345  /srv/a/much/longer/project/path\n"
        );
        let narrow = render(&["NAME", "N", "PROJECT"], &[1], rows, Some(50));
        assert!(narrow.lines().all(|line| line.chars().count() <= 50), "{narrow}");
        assert!(narrow.contains("a-very-long-sandbox-name"), "{narrow}");
    }
}
