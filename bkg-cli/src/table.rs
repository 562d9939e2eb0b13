//! The tables of `ls`, `keys ls`, `runs ls` and `audit tail`: plain columns as docker prints
//! them, wrapped to the terminal's width when stdout is one.

use std::io::IsTerminal;

use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement, Table, Width, presets};

/// The width to fit when stdout is a terminal: `COLUMNS` when set, else the terminal's; none
/// otherwise (a pipe gets whole lines, whatever `COLUMNS` says).
pub fn width() -> Option<u16> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|value| value.parse::<u16>().ok()) {
        return Some(columns);
    }
    terminal_size::terminal_size_of(&stdout).map(|(terminal_size::Width(columns), _)| columns)
}

/// How narrow a wrapping column may get before the table grows wider than the terminal instead.
const NARROWEST: u16 = 12;

/// The least a wrapping column takes: its widest cell up to `NARROWEST`, its header whole.
fn narrowest(widest: usize, header: &str) -> usize {
    widest.min(usize::from(NARROWEST)).max(header.chars().count())
}

/// Renders `rows` under `headers`, the columns at `right` aligned right, each line ending in a
/// newline without trailing blanks. Only the columns at `wrap` wrap when space is short (never
/// below a few characters); the others, ids and names, stay whole.
pub fn render(
    headers: &[&str],
    right: &[usize],
    wrap: &[usize],
    rows: impl IntoIterator<Item = Vec<String>>,
    width: Option<u16>,
) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING).set_header(headers.iter().copied());
    let mut widest: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(wide) = widest.get_mut(index) {
                *wide = (*wide).max(cell.chars().count());
            }
        }
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
        let padding = if index == last { 0 } else { 2 };
        column.set_padding((0, padding));
        if right.contains(&index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
        // The boundary counts the padding too; a header is never cut.
        let header = headers.get(index).copied().unwrap_or_default();
        let narrowest = narrowest(widest.get(index).copied().unwrap_or(0), header);
        let narrowest = u16::try_from(narrowest).unwrap_or(u16::MAX).saturating_add(padding);
        column.set_constraint(if wrap.contains(&index) {
            ColumnConstraint::LowerBoundary(Width::Fixed(narrowest))
        } else {
            ColumnConstraint::ContentWidth
        });
    }
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `render`, but on a terminal too narrow for the whole table the columns at `optional` are
/// left out, in that order, until it fits (as `kubectl get` shows fewer columns): a narrow
/// terminal sees the ids whole and loses the least needed columns; a pipe gets them all.
pub fn render_fitting(
    headers: &[&str],
    right: &[usize],
    wrap: &[usize],
    rows: Vec<Vec<String>>,
    width: Option<u16>,
    optional: &[usize],
) -> String {
    let mut kept: Vec<usize> = (0..headers.len()).collect();
    if let Some(width) = width {
        let widths = widths(headers, rows.iter());
        // A wrapping column can give up all but its narrowest, as `render` lets it.
        let least = |index: usize| {
            let widest = usize::from(widths.get(index).copied().unwrap_or(0));
            let header = headers.get(index).copied().unwrap_or_default();
            if wrap.contains(&index) { narrowest(widest, header) } else { widest }
        };
        let natural = |kept: &[usize]| kept.iter().map(|&index| least(index) + 2).sum::<usize>().saturating_sub(2);
        for column in optional {
            if natural(&kept) <= usize::from(width) {
                break;
            }
            kept.retain(|index| index != column);
        }
    }
    let place = |list: &[usize]| -> Vec<usize> {
        kept.iter().enumerate().filter(|(_, index)| list.contains(index)).map(|(place, _)| place).collect()
    };
    let headers: Vec<&str> = kept.iter().map(|&index| headers[index]).collect();
    let rows =
        rows.into_iter().map(|row| kept.iter().map(|&index| row.get(index).cloned().unwrap_or_default()).collect());
    render(&headers, &place(right), &place(wrap), rows, width)
}

/// The width of each column of `render(headers, .., rows, None)`: its widest cell.
pub fn widths<'a>(headers: &[&str], rows: impl IntoIterator<Item = &'a Vec<String>>) -> Vec<u16> {
    let mut widest: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(wide) = widest.get_mut(index) {
                *wide = (*wide).max(cell.chars().count());
            }
        }
    }
    widest.into_iter().map(|wide| u16::try_from(wide).unwrap_or(u16::MAX)).collect()
}

/// One more row of a table already printed with columns `widths` wide (a followed log): it
/// lines up under it, and a longer cell pushes the rest of its row aside rather than wrap.
pub fn row(widths: &[u16], right: &[usize], cells: Vec<String>) -> String {
    let mut line = String::new();
    for (index, cell) in cells.iter().enumerate() {
        let width = usize::from(widths.get(index).copied().unwrap_or(0));
        let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
        if right.contains(&index) {
            line.push_str(&pad);
            line.push_str(cell);
        } else {
            line.push_str(cell);
            line.push_str(&pad);
        }
        line.push_str("  ");
    }
    line.trim_end().to_owned()
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
        let text = render(&["NAME", "N", "PROJECT"], &[1], &[2], rows.clone(), None);
        assert_eq!(
            text,
            "NAME                          N  PROJECT\n\
             a-very-long-sandbox-name      1  /srv/x\n\
             b                         12345  /srv/a/much/longer/project/path\n"
        );
        let narrow = render(&["NAME", "N", "PROJECT"], &[1], &[2], rows.clone(), Some(50));
        assert!(narrow.lines().all(|line| line.chars().count() <= 50), "{narrow}");
        assert!(narrow.contains("a-very-long-sandbox-name"), "{narrow}");
        // Too narrow for the whole names: the table grows past the width rather than cut them.
        let tight = render(&["NAME", "N", "PROJECT"], &[1], &[2], rows, Some(20));
        assert!(tight.contains("a-very-long-sandbox-name"), "{tight}");
        assert!(tight.lines().all(|line| line.chars().count() >= 5 || line.is_empty()), "{tight}");
        // A wrapping column of short cells under a longer header keeps the header whole.
        let short = vec![vec!["a".to_owned(), "p1".to_owned(), "/srv/a/much/longer/project/path".to_owned()]];
        let text = render(&["NAME", "SANDBOX", "PROJECT"], &[], &[1, 2], short, Some(20));
        assert!(text.lines().next().is_some_and(|header| header.contains("SANDBOX")), "{text}");
    }

    #[test]
    fn a_later_row_lines_up_under_the_table() {
        let rows = vec![vec!["1".to_owned(), "short".to_owned(), "x".to_owned()]];
        let table = render(&["SEQ", "NAME", "END"], &[0], &[], rows.clone(), None);
        let later = row(&widths(&["SEQ", "NAME", "END"], &rows), &[0], vec!["12".into(), "a".into(), "y".into()]);
        assert_eq!(format!("{table}{later}\n"), "SEQ  NAME   END\n  1  short  x\n 12  a      y\n");
    }
}
