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

/// The least a wrapping column takes: its widest cell up to `NARROWEST`, but never less than the
/// longest word of a cell of several (a list of requirements wraps between them, none cut in two;
/// found by a new-user trial; a cell of one long word, a path, may still be cut) nor its header.
fn narrowest(size: Size, header: &str) -> usize {
    size.widest.min(usize::from(NARROWEST)).max(size.longest_word).max(header.chars().count())
}

/// How wide a column's cells are: the widest, and the longest word in any cell of several.
#[derive(Clone, Copy, Default)]
struct Size {
    widest: usize,
    longest_word: usize,
}

/// The `Size` of each of the columns of `headers` over `rows`.
fn sizes<'a>(headers: &[&str], rows: impl IntoIterator<Item = &'a Vec<String>>) -> Vec<Size> {
    let mut sizes: Vec<Size> =
        headers.iter().map(|header| Size { widest: header.chars().count(), longest_word: 0 }).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(size) = sizes.get_mut(index) {
                size.widest = size.widest.max(cell.chars().count());
                if cell.split_whitespace().nth(1).is_some() {
                    let longest = cell.split_whitespace().map(|word| word.chars().count()).max().unwrap_or(0);
                    size.longest_word = size.longest_word.max(longest);
                }
            }
        }
    }
    sizes
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
    let rows: Vec<Vec<String>> = rows.into_iter().collect();
    let sizes = sizes(headers, &rows);
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
        let padding = if index == last { 0 } else { 2 };
        column.set_padding((0, padding));
        if right.contains(&index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
        // The boundary counts the padding too; a header is never cut.
        let header = headers.get(index).copied().unwrap_or_default();
        let narrowest = narrowest(sizes.get(index).copied().unwrap_or_default(), header);
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
        let sizes = sizes(headers, &rows);
        // A wrapping column can give up all but its narrowest, as `render` lets it.
        let least = |index: usize| {
            let size = sizes.get(index).copied().unwrap_or_default();
            let header = headers.get(index).copied().unwrap_or_default();
            if wrap.contains(&index) { narrowest(size, header) } else { size.widest }
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
    sizes(headers, rows).into_iter().map(|size| u16::try_from(size.widest).unwrap_or(u16::MAX)).collect()
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
    fn a_list_wraps_between_its_words_and_never_inside_one() {
        let id = "4d7394c08c9e65737b15cbefc1d0c0ba".to_owned();
        let rows = vec![vec![id, "attrs==24.2.0 zope-interface==7.0 six==1.17.0".to_owned()]];
        let text = render(&["ID", "PACKAGES"], &[], &[1], rows, Some(50));
        let words: Vec<&str> =
            text.lines().skip(1).flat_map(str::split_whitespace).filter(|word| !word.starts_with("4d73")).collect();
        assert_eq!(words, ["attrs==24.2.0", "zope-interface==7.0", "six==1.17.0"], "{text}");
    }

    #[test]
    fn a_later_row_lines_up_under_the_table() {
        let rows = vec![vec!["1".to_owned(), "short".to_owned(), "x".to_owned()]];
        let table = render(&["SEQ", "NAME", "END"], &[0], &[], rows.clone(), None);
        let later = row(&widths(&["SEQ", "NAME", "END"], &rows), &[0], vec!["12".into(), "a".into(), "y".into()]);
        assert_eq!(format!("{table}{later}\n"), "SEQ  NAME   END\n  1  short  x\n 12  a      y\n");
    }
}
