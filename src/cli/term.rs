//! The terminal kit of the command-line views (`status`, `where`, `plan`): where the output
//! goes (the terminal's width, whether to color), ANSI styles that switch off without a
//! terminal, aligned table cells, word wrap, labelled blocks, bars and compact number formats.

use std::fmt::Write as _;
use std::io::IsTerminal;

use jiff::Timestamp;

pub(super) const BOLD: &str = "1";
pub(super) const DIM: &str = "2";
pub(super) const RED: &str = "31";
pub(super) const GREEN: &str = "32";
pub(super) const YELLOW: &str = "33";
pub(super) const CYAN: &str = "36";

/// Width of a terminal that does not tell its size.
pub const FALLBACK_WIDTH: usize = 80;

/// Where a view's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A terminal, `columns` wide when it says (the `TIOCGWINSZ` ioctl).
    Terminal {
        /// Its width in columns, if known.
        columns: Option<u16>,
    },
    /// A pipe or a file.
    Pipe,
}

impl Output {
    /// Where stdout goes: a terminal (asked for its size) or not.
    pub fn stdout() -> Output {
        let stdout = std::io::stdout();
        if !stdout.is_terminal() {
            return Output::Pipe;
        }
        Output::Terminal {
            columns: rustix::termios::tcgetwinsize(&stdout)
                .ok()
                .map(|size| size.ws_col),
        }
    }
}

/// The width to fit text in, `None` for no wrapping at all: `COLUMNS` when it is a positive
/// number (an override, as for other terminal programs), else the terminal's own width, else
/// [`FALLBACK_WIDTH`] on a terminal that does not say; output that goes to a pipe or a file
/// is not wrapped (as `kubectl get` does not wrap).
pub fn width(columns_env: Option<&str>, output: Output) -> Option<usize> {
    let columns = columns_env
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| *w > 0);
    match (columns, output) {
        (Some(columns), _) => Some(columns),
        (None, Output::Terminal { columns: Some(c) }) if c > 0 => Some(usize::from(c)),
        (None, Output::Terminal { .. }) => Some(FALLBACK_WIDTH),
        (None, Output::Pipe) => None,
    }
}

/// [`width`] for this process's stdout and environment.
pub fn width_from_env() -> Option<usize> {
    width(std::env::var("COLUMNS").ok().as_deref(), Output::stdout())
}

/// Whether to use ANSI colors: stdout is a terminal and `NO_COLOR` is unset or empty.
pub fn color_from_env() -> bool {
    crate::telemetry::colour(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// Indentation of the blocks under a policy header.
pub(super) const INDENT: usize = 2;
/// Width of the label column of the failover/rebalance/advice/conditions blocks.
pub(super) const LABEL: usize = 12;

#[derive(Debug, Clone, Copy)]
pub(super) struct Painter {
    pub(super) color: bool,
}

impl Painter {
    pub(super) fn paint(&self, text: &str, style: Option<&str>) -> String {
        match style {
            Some(code) if self.color && !text.is_empty() => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_owned(),
        }
    }
}

/// Display width: every glyph used here is one column wide.
pub(super) fn cols(s: &str) -> usize {
    s.chars().count()
}

/// A table cell: painted text and the width of its plain text.
#[derive(Debug, Clone)]
pub(super) struct Cell {
    pub(super) text: String,
    pub(super) width: usize,
    pub(super) right: bool,
}

impl Cell {
    pub(super) fn plain(text: impl Into<String>) -> Cell {
        let text = text.into();
        Cell {
            width: cols(&text),
            text,
            right: false,
        }
    }

    pub(super) fn styled(text: &str, style: Option<&str>, p: Painter) -> Cell {
        Cell {
            width: cols(text),
            text: p.paint(text, style),
            right: false,
        }
    }

    pub(super) fn right(mut self) -> Cell {
        self.right = true;
        self
    }
}

/// Writes rows with columns aligned, two spaces apart, after `indent` spaces.
pub(super) fn write_table(out: &mut String, rows: &[Vec<Cell>], indent: usize) {
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; ncols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.width);
        }
    }
    for row in rows {
        let mut line = " ".repeat(indent);
        for (i, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.width);
            let last = i + 1 == row.len();
            if cell.right {
                line.push_str(&pad);
                line.push_str(&cell.text);
            } else {
                line.push_str(&cell.text);
                if !last {
                    line.push_str(&pad);
                }
            }
            if !last {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// Greedy word wrap to `width` columns; a word longer than `width` gets a line of its own.
pub(super) fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(10);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && cols(&line) + 1 + cols(word) > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// A labelled block: the label in a column of its own, each entry wrapped to the width left
/// (continuation lines indented two more); `paint(entry, line, text)` colors each line.
pub(super) fn write_block(
    out: &mut String,
    label: &str,
    entries: &[String],
    width: usize,
    p: Painter,
    paint: impl Fn(usize, usize, &str) -> String,
) {
    let avail = width.saturating_sub(INDENT + LABEL + 2);
    let mut first = true;
    for (index, entry) in entries.iter().enumerate() {
        for (n, line) in wrap(&clean(entry), avail).into_iter().enumerate() {
            let head = if first {
                first = false;
                format!(
                    "{}{}",
                    p.paint(label, Some(DIM)),
                    " ".repeat(LABEL.saturating_sub(cols(label)))
                )
            } else {
                " ".repeat(LABEL)
            };
            let body = paint(index, n, &line);
            let indent = if n == 0 { "" } else { "  " };
            let _ = writeln!(out, "{}{head}{indent}{body}", " ".repeat(INDENT));
        }
    }
}

/// Text from the cluster (messages, advice) with control characters replaced, so that an
/// object's content cannot send escape sequences to the terminal.
pub(super) fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `125 s` → `2m` (kubectl-style ages).
pub(super) fn age(now: Timestamp, then: Timestamp) -> String {
    let secs = (now.as_second() - then.as_second()).max(0);
    human_secs(secs)
}

pub(super) fn human_secs(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `81234` → `81,234`.
pub(super) fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// `10234` → `10.2k`.
pub(super) fn compact(n: i64) -> String {
    let f = n as f64;
    match n.unsigned_abs() {
        a if a < 1_000 => n.to_string(),
        a if a < 999_950 => format!("{:.1}k", f / 1e3),
        a if a < 999_950_000 => format!("{:.1}M", f / 1e6),
        _ => format!("{:.1}G", f / 1e9),
    }
}

/// A slot share for humans: `100%`, `50%`, `<1%`, `>99%`.
pub(super) fn share(percent: f64) -> String {
    if percent > 0.0 && percent < 1.0 {
        "<1%".to_owned()
    } else if (99.5..100.0).contains(&percent) {
        ">99%".to_owned()
    } else {
        format!("{percent:.0}%")
    }
}

/// Color of a usage level against the threshold.
pub(super) fn level(percent: f64, threshold: Option<i32>) -> &'static str {
    let t = f64::from(threshold.unwrap_or(100));
    if percent >= t {
        RED
    } else if percent >= t - 10.0 {
        YELLOW
    } else {
        GREEN
    }
}

/// `[██████████░░░░░│░░░]`: `cells` cells filled to `percent`, with `│` at the threshold.
pub(super) fn usage_bar(percent: f64, threshold: Option<i32>, cells: usize, p: Painter) -> Cell {
    let cells = cells.max(1);
    let filled = ((percent / 100.0 * cells as f64).round() as usize).min(cells);
    let marker =
        threshold.map(|t| ((f64::from(t) / 100.0 * cells as f64).floor() as usize).min(cells - 1));
    let style = level(percent, threshold);
    let mut text = String::from("[");
    let mut run = String::new();
    let mut run_style = None;
    let flush = |text: &mut String, run: &mut String, style: Option<&str>| {
        text.push_str(&p.paint(run, style));
        run.clear();
    };
    for i in 0..cells {
        let (glyph, s) = if Some(i) == marker {
            ('│', None)
        } else if i < filled {
            ('█', Some(style))
        } else {
            ('░', Some(DIM))
        };
        if s != run_style {
            flush(&mut text, &mut run, run_style);
            run_style = s;
        }
        run.push(glyph);
    }
    flush(&mut text, &mut run, run_style);
    text.push(']');
    Cell {
        text,
        width: cells + 2,
        right: false,
    }
}

/// `[   no capacity   ]`: the bar's place when there is nothing to measure against.
pub(super) fn placeholder_bar(label: &str, cells: usize, p: Painter) -> Cell {
    let cells = cells.max(cols(label));
    let left = (cells - cols(label)) / 2;
    let inner = format!(
        "{}{label}{}",
        " ".repeat(left),
        " ".repeat(cells - cols(label) - left)
    );
    Cell {
        text: format!("[{}]", p.paint(&inner, Some(DIM))),
        width: cells + 2,
        right: false,
    }
}

pub(super) fn progress_bar(percent: f64, cells: usize, p: Painter) -> Cell {
    let filled = ((percent / 100.0 * cells as f64).round() as usize).min(cells);
    Cell {
        text: format!(
            "[{}{}]",
            p.paint(&"█".repeat(filled), Some(CYAN)),
            p.paint(&"░".repeat(cells - filled), Some(DIM))
        ),
        width: cells + 2,
        right: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_overrides_the_terminal_and_a_pipe_is_not_wrapped() {
        let tty = |columns| Output::Terminal { columns };
        // The terminal's own width, else 80 when it does not say.
        assert_eq!(width(None, tty(Some(132))), Some(132));
        assert_eq!(width(None, tty(None)), Some(FALLBACK_WIDTH));
        assert_eq!(width(None, tty(Some(0))), Some(FALLBACK_WIDTH));
        // COLUMNS wins wherever the output goes; nonsense in it is ignored.
        assert_eq!(width(Some("100"), tty(Some(132))), Some(100));
        assert_eq!(width(Some(" 90 "), Output::Pipe), Some(90));
        assert_eq!(width(Some("wide"), tty(Some(132))), Some(132));
        assert_eq!(width(Some("0"), tty(None)), Some(FALLBACK_WIDTH));
        assert_eq!(width(Some(""), Output::Pipe), None);
        // A pipe or a file: no wrapping.
        assert_eq!(width(None, Output::Pipe), None);
    }
}
