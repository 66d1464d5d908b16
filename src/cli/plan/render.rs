//! The preview as text for a terminal of a given width (pure).

use std::fmt::Write as _;

use crate::api::quantity::format_bytes_human;
use crate::cli::term::*;

use super::preview::Preview;

/// Draws the preview for a terminal `width` columns wide; ANSI colors when `color`.
pub fn render(preview: &Preview, width: usize, color: bool) -> String {
    let p = Painter { color };
    let width = width.max(60);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} · routing v{} · threshold {}% · band ±{} points around the {:.0}% mean",
        p.paint("plan for", Some(DIM)),
        p.paint(&preview.policy, Some(BOLD)),
        preview.routing_version,
        preview.threshold_percent,
        preview.band_points,
        preview.mean_percent
    );
    out.push('\n');
    if !preview.what_if.is_empty() {
        write_block(
            &mut out,
            "what if",
            &preview.what_if,
            width,
            p,
            |_, _, l| p.paint(l, Some(CYAN)),
        );
    }
    if !preview.notes.is_empty() {
        write_block(&mut out, "note", &preview.notes, width, p, |_, _, l| {
            p.paint(l, Some(YELLOW))
        });
    }
    if let Some(reason) = &preview.reason {
        write_block(
            &mut out,
            "why",
            std::slice::from_ref(reason),
            width,
            p,
            |_, _, l| l.to_owned(),
        );
    }
    if let Some(idle) = &preview.idle {
        let line = format!("nothing would move: {idle}");
        write_block(
            &mut out,
            "plan",
            std::slice::from_ref(&line),
            width,
            p,
            |_, _, l| l.to_owned(),
        );
    }

    if !preview.moves.is_empty() {
        out.push('\n');
        let mut rows = vec![
            ["CATEGORY", "SLOTS", "FROM", "TO", "KEYS", "BYTES"]
                .iter()
                .enumerate()
                .map(|(n, h)| {
                    let c = Cell::styled(h, Some(DIM), p);
                    if n >= 4 { c.right() } else { c }
                })
                .collect::<Vec<_>>(),
        ];
        for m in &preview.moves {
            let slots = if m.start == m.end {
                m.start.to_string()
            } else {
                format!("{}-{}", m.start, m.end)
            };
            rows.push(vec![
                Cell::styled(&m.category, Some(BOLD), p),
                Cell::plain(slots),
                Cell::plain(m.from.clone()),
                Cell::plain(if m.handover {
                    format!("{} (handover)", m.to)
                } else {
                    m.to.clone()
                }),
                Cell::plain(compact(m.keys as i64)).right(),
                Cell::plain(format_bytes_human(m.bytes)).right(),
            ]);
        }
        let n = preview.moves.len();
        rows.push(vec![
            Cell::styled("total", Some(BOLD), p),
            Cell::plain(format!("{n} move{}", if n == 1 { "" } else { "s" })),
            Cell::plain(""),
            Cell::plain(""),
            Cell::plain(compact(preview.total_keys as i64)).right(),
            Cell::plain(format_bytes_human(preview.total_bytes)).right(),
        ]);
        write_table(&mut out, &rows, INDENT);
        if preview.moves.iter().any(|m| m.handover) {
            let _ = writeln!(
                out,
                "{}{}",
                " ".repeat(INDENT),
                p.paint(
                    "(handover): a replicated range whose new owner is seeded as a third copy (its writes Sync meanwhile), then takes over by swapping roles; no Job copies it, and the rest is planned again afterwards",
                    Some(DIM)
                )
            );
        }
        if let Some(least) = preview.least_bytes {
            let _ = writeln!(
                out,
                "{}{}",
                " ".repeat(INDENT),
                p.paint(
                    &format!(
                        "the least that brings every instance within the band: {}",
                        format_bytes_human(least)
                    ),
                    Some(DIM)
                )
            );
        }
    }

    out.push('\n');
    let mut rows = vec![
        ["INSTANCE", "TIER", "", "BEFORE", "", "AFTER", ""]
            .iter()
            .enumerate()
            .map(|(n, h)| {
                let c = Cell::styled(h, Some(DIM), p);
                if matches!(n, 3 | 5) { c.right() } else { c }
            })
            .collect::<Vec<_>>(),
    ];
    let pct = |x: Option<f64>, bytes: u64| match x {
        Some(x) => format!("{x:.0}%"),
        None => format_bytes_human(bytes),
    };
    for i in &preview.instances {
        let state = if i.drain {
            "draining".to_owned()
        } else if i.phase != "Ready" {
            i.phase.to_lowercase()
        } else {
            String::new()
        };
        let verdict = match i.in_band {
            Some(true) => Cell::styled("within the band", Some(GREEN), p),
            Some(false) => Cell::styled("outside the band", Some(YELLOW), p),
            None => Cell::plain(""),
        };
        rows.push(vec![
            Cell::styled(&i.name, Some(BOLD), p),
            Cell::plain(i.tier.clone().unwrap_or_else(|| "—".to_owned())),
            Cell::styled(&state, Some(DIM), p),
            Cell::plain(pct(i.before_percent, i.used_bytes)).right(),
            Cell::plain("→"),
            Cell::plain(pct(i.after_percent, i.planned_bytes)).right(),
            verdict,
        ]);
    }
    write_table(&mut out, &rows, INDENT);

    out.push('\n');
    let last = match &preview.when {
        Some(when) => format!("Nothing was changed. {}.", capitalize(when)),
        None => "Nothing was changed: the operator plans the same now.".to_owned(),
    };
    for line in wrap(&clean(&last), width) {
        let _ = writeln!(out, "{}", p.paint(&line, Some(DIM)));
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
