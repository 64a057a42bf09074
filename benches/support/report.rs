//! Statistics and the printed tables of the benchmarks.
//!
//! Every bench prints its own tables. When `$SIDESPAWN_BENCH_FIGURES` names
//! a file, each printed table is also appended to it as tab-separated lines
//! (`<table>\t<H|S|R>\t<cells...>`: header, section title, row), from
//! which `tests/bench.sh` prints one combined table and writes
//! `docs/PERFORMANCE.md`.

use std::io::Write;
use std::time::Duration;

/// The variable naming the file that collects every bench's tables.
pub const FIGURES_ENV: &str = "SIDESPAWN_BENCH_FIGURES";

/// The median; the mean of the two middle samples for an even count.
pub fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    match s.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2,
    }
}

/// Nearest-rank percentile: the smallest sample with at least `p` % of the
/// samples at or below it (so the p99 of 300 samples is the 297th).
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn median_u64(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// A duration with a unit that keeps three significant digits readable.
pub fn fmt_dur(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Peak RSS of a process in KiB (as `wait4` reports it), `-` when unknown.
pub fn fmt_kib(kib: u64) -> String {
    if kib == 0 {
        return "-".to_owned();
    }
    if kib >= 10 * 1024 {
        format!("{:.0} MiB", kib as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    }
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        return f64::INFINITY;
    }
    a.as_secs_f64() / b.as_secs_f64()
}

enum Line {
    Section(String),
    Row(Vec<String>),
}

/// Rows under section headings, printed with aligned columns: the first and
/// last column left-aligned (names, verdicts), the others right-aligned
/// (numbers).
pub struct Table {
    /// Which table of the combined report the rows belong to.
    name: String,
    header: Vec<String>,
    lines: Vec<Line>,
}

/// The columns of every bench's main table, which `tests/bench.sh` merges.
pub const HEADER: [&str; 8] = [
    "Figure", "Median", "p99", "Peak RSS", "Baseline", "Ratio", "Target", "Result",
];

/// The name of the main table in the combined report.
pub const FIGURES: &str = "figures";

/// `PASS` or `MISS`.
pub fn verdict(pass: bool) -> String {
    (if pass { "PASS" } else { "MISS" }).to_owned()
}

impl Table {
    /// A table with `HEADER`, part of the combined report's main table.
    pub fn figures() -> Table {
        Table::new(FIGURES, &HEADER)
    }

    pub fn new(name: &str, header: &[&str]) -> Table {
        Table {
            name: name.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            lines: Vec::new(),
        }
    }

    pub fn section(&mut self, title: impl Into<String>) {
        self.lines.push(Line::Section(title.into()));
    }

    pub fn row(&mut self, cells: impl Into<Vec<String>>) {
        self.lines.push(Line::Row(cells.into()));
    }

    /// A figure that was not measured, with the reason in the last column.
    pub fn skipped(&mut self, figure: &str, why: &str) {
        let mut cells = vec![figure.to_owned()];
        cells.resize(self.header.len().saturating_sub(1), "-".to_owned());
        cells.push(format!("SKIPPED ({why})"));
        self.row(cells);
    }

    /// Prints the table, and appends it to `$SIDESPAWN_BENCH_FIGURES` when
    /// that is set (a failure to do so is reported, never fatal: the table
    /// was printed).
    pub fn print(&self) {
        self.print_aligned();
        if let Some(path) = std::env::var_os(FIGURES_ENV).filter(|p| !p.is_empty()) {
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(self.tsv().as_bytes()));
            if let Err(e) = appended {
                eprintln!(
                    "cannot append the table to {} ({FIGURES_ENV}): {e}",
                    std::path::Path::new(&path).display()
                );
            }
        }
    }

    /// The table as `<name>\t<H|S|R>\t<cells>` lines; tabs and newlines in
    /// cells become spaces.
    fn tsv(&self) -> String {
        let clean = |c: &str| c.replace(['\t', '\n', '\r'], " ");
        let line = |kind: &str, cells: &[String]| {
            let mut l = format!("{}\t{kind}", self.name);
            for c in cells {
                l.push('\t');
                l.push_str(&clean(c));
            }
            l.push('\n');
            l
        };
        let mut out = line("H", &self.header);
        for l in &self.lines {
            out.push_str(&match l {
                Line::Section(t) => line("S", std::slice::from_ref(t)),
                Line::Row(cells) => line("R", cells),
            });
        }
        out
    }

    fn print_aligned(&self) {
        let cols = self.header.len();
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for line in &self.lines {
            if let Line::Row(cells) = line {
                for (w, c) in width.iter_mut().zip(cells) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let fmt_row = |cells: &[String]| {
            cells
                .iter()
                .zip(&width)
                .enumerate()
                .map(|(i, (c, w))| {
                    let pad = " ".repeat(w.saturating_sub(c.chars().count()));
                    if i == 0 || i + 1 == cols {
                        format!("{c}{pad}")
                    } else {
                        format!("{pad}{c}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let rule: String = width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-");
        println!("{}", fmt_row(&self.header).trim_end());
        println!("{rule}");
        for line in &self.lines {
            match line {
                Line::Section(t) => println!("{t}"),
                Line::Row(cells) => println!("{}", fmt_row(cells).trim_end()),
            }
        }
    }
}
