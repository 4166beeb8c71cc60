//! The markdown tables `tern-bench live` prints.

use super::report::{aggregate, control_ms, times_late, Outcome, Row};
use std::fmt::Write as _;
use std::time::Duration;

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / 1048576.0)
}

fn time_cell(v: u64, missing: bool) -> String {
    if missing {
        format!("{v}†")
    } else {
        v.to_string()
    }
}

/// The six cells of one driver: wall, QEMU total, downtime, MiB, iterations, gap.
fn cells(o: Option<&Outcome>) -> Vec<String> {
    match o {
        None => vec![
            "skipped".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
        ],
        Some(Outcome::Done(r)) => {
            let miss = r.figures.times_missing();
            vec![
                ms(r.wall),
                time_cell(r.figures.total_ms, miss),
                time_cell(r.figures.downtime_ms, miss),
                mib(r.figures.bytes),
                r.figures.iterations.to_string(),
                match (&r.crash, r.gap) {
                    (None, Some(g)) => ms(g),
                    (None, None) => "none".into(),
                    (Some(_), Some(g)) => format!("{}‡", ms(g)),
                    (Some(_), None) => "crash‡".into(),
                },
            ]
        }
        Some(Outcome::DidNotConverge { after, figures }) => vec![
            format!("did not converge in {} s", after.as_secs()),
            "".into(),
            "".into(),
            mib(figures.bytes),
            figures.iterations.to_string(),
            "".into(),
        ],
        Some(Outcome::Failed(_)) => vec![
            "failed".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
        ],
    }
}

fn wall(o: Option<&Outcome>) -> Option<Duration> {
    match o {
        Some(Outcome::Done(r)) => Some(r.wall),
        _ => None,
    }
}

/// Renders rows as a markdown table with aligned columns, numbers to the
/// right; the last column left when `text_last`.
fn markdown(header: &[&str], rows: &[Vec<String>], text_last: bool) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let pad = " ".repeat(w[i] - c.chars().count());
            if text_last && i + 1 == cells.len() {
                let _ = write!(s, " {c}{pad} |");
            } else {
                let _ = write!(s, " {pad}{c} |");
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('|');
    for (i, n) in w.iter().enumerate() {
        if text_last && i + 1 == w.len() {
            let _ = write!(out, ":{}|", "-".repeat(n + 1));
        } else {
            let _ = write!(out, "{}:|", "-".repeat(n + 1));
        }
    }
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// The results table: Tern and direct QMP side by side, and Tern's
/// overhead: the difference of the median wall clocks, and the difference
/// of the control times (wall clock minus QEMU's total-time, see
/// [`control_ms`]).
pub fn results_table(rows: &[Row]) -> String {
    let header = [
        "RAM MiB",
        "dirty MiB/s",
        "Tern wall ms",
        "QEMU total ms",
        "downtime ms",
        "MiB sent",
        "iter",
        "guest gap ms",
        "QMP wall ms",
        "QEMU total ms",
        "downtime ms",
        "MiB sent",
        "iter",
        "guest gap ms",
        "Δ wall ms",
        "Δ control ms",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (t, d) = (aggregate(&r.tern), aggregate(&r.direct));
            let mut v = vec![
                r.case.memory_mib.to_string(),
                r.case.dirty_mib_s.to_string(),
            ];
            v.extend(cells(t.as_ref()));
            v.extend(cells(d.as_ref()));
            v.push(match (wall(t.as_ref()), wall(d.as_ref())) {
                (Some(t), Some(d)) => {
                    format!("{:+}", t.as_millis() as i128 - d.as_millis() as i128)
                }
                _ => String::new(),
            });
            v.push(match (control_ms(&r.tern), control_ms(&r.direct)) {
                (Some(t), Some(d)) => format!("{:+}", t - d),
                _ => String::new(),
            });
            v
        })
        .collect();
    let mut out = markdown(&header, &body, false);
    let missing = rows.iter().any(|r| {
        [aggregate(&r.tern), aggregate(&r.direct)]
            .iter()
            .any(|o| matches!(o, Some(Outcome::Done(x)) if x.figures.times_missing()))
    });
    let crashed = rows.iter().any(|r| {
        [aggregate(&r.tern), aggregate(&r.direct)]
            .iter()
            .any(|o| matches!(o, Some(Outcome::Done(x)) if x.crash.is_some()))
    });
    if crashed {
        out.push_str(
            "\n‡ the guest crashed on the destination after a migration of this cell (kernel oops or TERN-FAIL); repetitions stopped there, see the notes.\n",
        );
    }
    if missing {
        out.push_str(
            "\n† in every run QEMU reported status \"completed\" with total-time and downtime still 0 (read before QEMU filled them in).\n",
        );
    }
    out
}

/// The conditions table: destination start time, load, other QEMUs, notes.
pub fn conditions_table(rows: &[Row]) -> String {
    let header = [
        "RAM MiB",
        "dirty MiB/s",
        "Tern walls ms",
        "QMP walls ms",
        "QMP dest start ms",
        "load (1 min)",
        "other QEMUs",
        "notes",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut notes = r.notes.clone();
            for (who, runs) in [("tern", &r.tern), ("QMP", &r.direct)] {
                for o in runs.iter() {
                    if let Outcome::Failed(e) = o {
                        notes.push(format!("{who} failed: {e}"));
                    }
                }
                let n = times_late(runs);
                if n > 0 {
                    notes.push(format!(
                        "{who}: first \"completed\" had total-time/downtime 0 in {n} of {} runs",
                        runs.len()
                    ));
                }
            }
            vec![
                r.case.memory_mib.to_string(),
                r.case.dirty_mib_s.to_string(),
                walls(&r.tern),
                walls(&r.direct),
                r.dest_start.map(ms).unwrap_or_default(),
                r.load.map(|l| format!("{l:.2}")).unwrap_or_default(),
                r.other_qemus.to_string(),
                notes.join("; ").replace('|', "\\|").replace('\n', " "),
            ]
        })
        .collect();
    markdown(&header, &body, true)
}

/// Where Tern's wall-clock time went, for the cases that completed.
pub fn breakdown_table(rows: &[Row]) -> String {
    let header = [
        "RAM MiB",
        "dirty MiB/s",
        "CLI to Prepare",
        "Prepare",
        "hand-off",
        "copy (QEMU total)",
        "resume",
        "Confirm + exit",
    ];
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    let body: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|r| match aggregate(&r.tern) {
            Some(Outcome::Done(run)) => Some((r.case, run)),
            _ => None,
        })
        .map(|(case, run)| {
            let b = run.breakdown.unwrap_or_default();
            vec![
                case.memory_mib.to_string(),
                case.dirty_mib_s.to_string(),
                opt(b.to_prepare),
                opt(b.prepare),
                opt(b.handoff),
                format!("{} ({})", opt(b.copy), b.qemu_total_ms),
                opt(b.resume),
                opt(b.confirm),
            ]
        })
        .collect();
    markdown(&header, &body, false)
}

/// Wall-clock times of the runs that completed, e.g. "1033 980 1100".
pub fn walls(runs: &[Outcome]) -> String {
    runs.iter()
        .filter_map(|o| match o {
            Outcome::Done(r) => Some(ms(r.wall)),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::Case;
    use crate::live::report::{Figures, Run};

    #[test]
    fn table_shows_overhead_and_non_convergence() {
        let case = Case {
            memory_mib: 512,
            dirty_mib_s: 20,
        };
        let done = |w, t| {
            Outcome::Done(Run {
                wall: Duration::from_millis(w),
                figures: Figures {
                    total_ms: t,
                    downtime_ms: 40,
                    bytes: 300 << 20,
                    iterations: 3,
                },
                gap: Some(Duration::from_millis(120)),
                breakdown: None,
                times_late: t == 0,
                crash: None,
                ..Default::default()
            })
        };
        let rows = vec![
            Row {
                case,
                tern: vec![done(1500, 0), done(1400, 0), done(1600, 0)],
                direct: vec![done(1100, 1050), done(900, 0), done(1000, 1010)],
                dest_start: Some(Duration::from_millis(90)),
                other_qemus: 0,
                load: Some(1.0),
                notes: vec![],
            },
            Row {
                case,
                tern: vec![
                    done(1500, 700),
                    Outcome::DidNotConverge {
                        after: Duration::from_secs(120),
                        figures: Figures::default(),
                    },
                ],
                direct: vec![Outcome::Failed("boom | bang".into())],
                dest_start: None,
                other_qemus: 2,
                load: None,
                notes: vec![],
            },
        ];
        let t = results_table(&rows);
        // Medians: 1500 - 1000; QEMU's times only from runs that had them.
        assert!(t.contains("+500"), "{t}");
        assert!(t.contains("0†"), "{t}");
        assert!(t.contains(" 1050 |"), "{t}");
        assert!(t.contains("did not converge in 120 s"), "{t}");
        let c = conditions_table(&rows);
        assert!(c.contains("QMP failed: boom \\| bang"), "{c}");
        assert!(c.contains("1100 900 1000"), "{c}");
        assert!(
            c.contains("QMP: first \"completed\" had total-time/downtime 0 in 1 of 3 runs"),
            "{c}"
        );
    }

    #[test]
    fn crashed_guest_is_marked() {
        let run = Run {
            wall: Duration::from_millis(900),
            figures: Figures {
                total_ms: 800,
                ..Default::default()
            },
            gap: None,
            breakdown: None,
            times_late: false,
            crash: Some("BUG: kernel NULL pointer dereference".into()),
            ..Default::default()
        };
        assert_eq!(cells(Some(&Outcome::Done(run)))[5], "crash‡");
    }
}
