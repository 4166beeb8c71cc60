//! The markdown tables `tern-bench live` prints.

use super::report::{
    aggregate, check_line, control_ms, overhead_ms, times_late, Breakdown, DriverRuns, Outcome,
    Row, Run,
};
use super::Driver;
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

/// The cells of one driver's median run: wall, QEMU total, downtime, guest
/// pause, MiB, iterations.
fn cells(o: Option<&Outcome>) -> Vec<String> {
    let blank = |first: String| {
        let mut v = vec![first];
        v.extend(std::iter::repeat_n(String::new(), 5));
        v
    };
    match o {
        None => blank("skipped".into()),
        Some(Outcome::Done(r)) => {
            let miss = r.figures.times_missing();
            vec![
                ms(r.wall),
                time_cell(r.figures.total_ms, miss),
                time_cell(r.figures.downtime_ms, miss),
                match (&r.crash, r.gap) {
                    (None, Some(g)) => ms(g),
                    (None, None) => "none".into(),
                    (Some(_), Some(g)) => format!("{}‡", ms(g)),
                    (Some(_), None) => "crash‡".into(),
                },
                mib(r.figures.bytes),
                r.figures.iterations.to_string(),
            ]
        }
        Some(Outcome::DidNotConverge { after, figures }) => {
            let mut v = blank(format!("did not converge in {} s", after.as_secs()));
            v[4] = mib(figures.bytes);
            v[5] = figures.iterations.to_string();
            v
        }
        Some(Outcome::Failed(_)) => blank("failed".into()),
    }
}

/// Every (case, driver) pair that ran, in order.
fn each(rows: &[Row]) -> impl Iterator<Item = (&Row, &DriverRuns)> {
    rows.iter()
        .flat_map(|r| r.drivers.iter().map(move |d| (r, d)))
}

/// The leading cells: the case and the driver.
fn case_cells(r: &Row, d: &DriverRuns) -> Vec<String> {
    vec![
        r.case.memory_mib.to_string(),
        r.case.dirty_mib_s.to_string(),
        d.driver.label().to_string(),
    ]
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

/// The results table: one line per case and driver, with each driver's
/// medians and its control overhead (wall clock minus QEMU's total-time,
/// see [`control_ms`]) beside the floor's (QEMU driven directly).
pub fn results_table(rows: &[Row]) -> String {
    let header = [
        "RAM MiB",
        "dirty MiB/s",
        "driver",
        "wall ms",
        "QEMU total ms",
        "downtime ms",
        "guest pause ms",
        "MiB sent",
        "iter",
        "overhead ms",
        "Δ overhead ms",
    ];
    let body: Vec<Vec<String>> = each(rows)
        .map(|(r, d)| {
            let mut v = case_cells(r, d);
            v.extend(cells(aggregate(&d.outcomes).as_ref()));
            let mine = control_ms(&d.outcomes);
            v.push(mine.map(|c| c.to_string()).unwrap_or_default());
            let floor = r.of(Driver::Qmp).and_then(|q| control_ms(&q.outcomes));
            v.push(match (mine, floor) {
                _ if d.driver == Driver::Qmp => "floor".into(),
                (Some(m), Some(f)) => format!("{:+}", m - f),
                _ => String::new(),
            });
            v
        })
        .collect();
    let mut out = markdown(&header, &body, false);
    let medians: Vec<Option<Outcome>> = each(rows).map(|(_, d)| aggregate(&d.outcomes)).collect();
    let any = |f: &dyn Fn(&Run) -> bool| {
        medians
            .iter()
            .any(|o| matches!(o, Some(Outcome::Done(x)) if f(x)))
    };
    if any(&|x| x.crash.is_some()) {
        out.push_str(
            "\n‡ the guest crashed on the destination after a migration of this cell (kernel oops or TERN-FAIL); repetitions stopped there, see the notes.\n",
        );
    }
    if any(&|x| x.figures.times_missing()) {
        out.push_str(
            "\n† in every run QEMU reported status \"completed\" with total-time and downtime still 0 (read before QEMU filled them in).\n",
        );
    }
    out
}

/// The conditions table: every run's wall clock and overhead, load, other
/// QEMUs, notes.
pub fn conditions_table(rows: &[Row]) -> String {
    let header = [
        "RAM MiB",
        "dirty MiB/s",
        "driver",
        "walls ms",
        "overheads ms",
        "load (1 min)",
        "other QEMUs",
        "notes",
    ];
    let body: Vec<Vec<String>> = each(rows)
        .map(|(r, d)| {
            let mut notes = d.notes.clone();
            for o in &d.outcomes {
                if let Outcome::Failed(e) = o {
                    notes.push(format!("failed: {e}"));
                }
            }
            let n = times_late(&d.outcomes);
            if n > 0 {
                notes.push(format!(
                    "first \"completed\" had total-time/downtime 0 in {n} of {} runs",
                    d.outcomes.len()
                ));
            }
            let mut v = case_cells(r, d);
            v.extend([
                walls(&d.outcomes),
                overheads(&d.outcomes),
                r.load.map(|l| format!("{l:.2}")).unwrap_or_default(),
                r.other_qemus.to_string(),
                notes.join("; ").replace('|', "\\|").replace('\n', " "),
            ]);
            v
        })
        .collect();
    markdown(&header, &body, true)
}

/// Where each driver's wall-clock time went, in the run with its median
/// overhead; "–" where a phase is not the driver's or was not seen.
pub fn breakdown_table(rows: &[Row]) -> String {
    let header = [
        "RAM MiB",
        "dirty MiB/s",
        "driver",
        "CLI to Begin",
        "Begin",
        "Prepare",
        "hand-off",
        "copy (QEMU total)",
        "resume",
        "Confirm",
        "CLI exit",
        "overhead",
    ];
    let opt = |v: Option<u64>| v.map_or_else(|| "–".into(), |v| v.to_string());
    let body: Vec<Vec<String>> = each(rows)
        .filter_map(|(r, d)| match aggregate(&d.outcomes) {
            Some(Outcome::Done(run)) => Some((r, d, run)),
            _ => None,
        })
        .map(|(r, d, run)| {
            let b = run.breakdown.unwrap_or_default();
            let mut v = case_cells(r, d);
            v.extend([
                opt(b.start),
                opt(b.begin),
                opt(b.prepare),
                opt(b.handoff),
                format!("{} ({})", opt(b.copy), b.qemu_total_ms),
                opt(b.resume),
                opt(b.confirm),
                opt(b.exit),
                overhead_ms(&run).map_or_else(|| "–".into(), |o| o.to_string()),
            ]);
            v
        })
        .collect();
    markdown(&header, &body, false)
}

/// One line per flow and case with issue 19's two targets, against the
/// QMP driver's floor of the same case.
pub fn check_lines(rows: &[Row]) -> Vec<String> {
    each(rows)
        .filter(|(_, d)| d.driver != Driver::Qmp)
        .filter_map(|(r, d)| {
            let label = format!(
                "{} MiB, dirty {} MiB/s, {}",
                r.case.memory_mib,
                r.case.dirty_mib_s,
                d.driver.label()
            );
            let floor = r.of(Driver::Qmp).map(|q| q.outcomes.as_slice());
            check_line(&label, &d.outcomes, floor)
        })
        .collect()
}

/// A breakdown on one line, for the progress log.
pub fn phases_brief(b: &Breakdown) -> String {
    [
        ("start", b.start),
        ("begin", b.begin),
        ("prepare", b.prepare),
        ("hand-off", b.handoff),
        ("copy", b.copy),
        ("resume", b.resume),
        ("confirm", b.confirm),
        ("exit", b.exit),
    ]
    .iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n} {v}")))
    .collect::<Vec<_>>()
    .join(", ")
}

/// Each completed run's wall clock minus QEMU's total-time, e.g. "120 95 130".
pub fn overheads(runs: &[Outcome]) -> String {
    runs.iter()
        .filter_map(|o| match o {
            Outcome::Done(r) => Some(overhead_ms(r).map_or("?".into(), |v| v.to_string())),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    use crate::live::report::Figures;

    fn done(w: u64, t: u64) -> Outcome {
        Outcome::Done(Run {
            wall: Duration::from_millis(w),
            figures: Figures {
                total_ms: t,
                downtime_ms: 40,
                bytes: 300 << 20,
                iterations: 3,
            },
            gap: Some(Duration::from_millis(120)),
            times_late: t == 0,
            ..Default::default()
        })
    }

    fn runs(driver: Driver, outcomes: Vec<Outcome>) -> DriverRuns {
        DriverRuns {
            driver,
            outcomes,
            notes: vec![],
        }
    }

    #[test]
    fn table_shows_overhead_and_non_convergence() {
        let case = Case {
            memory_mib: 512,
            dirty_mib_s: 20,
        };
        let rows = vec![
            Row {
                case,
                drivers: vec![
                    runs(
                        Driver::Tern,
                        vec![done(1500, 1300), done(1400, 1250), done(1600, 0)],
                    ),
                    runs(Driver::TernP2p, vec![done(1500, 0), done(1400, 0)]),
                    runs(
                        Driver::Qmp,
                        vec![done(1100, 1050), done(900, 0), done(1000, 1010)],
                    ),
                ],
                other_qemus: 0,
                load: Some(1.0),
            },
            Row {
                case,
                drivers: vec![
                    runs(
                        Driver::Tern,
                        vec![
                            done(1500, 700),
                            Outcome::DidNotConverge {
                                after: Duration::from_secs(120),
                                figures: Figures::default(),
                            },
                        ],
                    ),
                    runs(Driver::Qmp, vec![Outcome::Failed("boom | bang".into())]),
                ],
                other_qemus: 2,
                load: None,
            },
        ];
        let t = results_table(&rows);
        // Overheads: tern 200 (of 200, 150), QMP 50 (of 50, -10): +150;
        // QEMU's times only from runs that had them.
        assert!(t.contains(" 200 |") && t.contains(" +150 |"), "{t}");
        assert!(t.contains("floor"), "{t}");
        assert!(t.contains("0†"), "{t}");
        assert!(t.contains(" 1050 |"), "{t}");
        assert!(t.contains("did not converge in 120 s"), "{t}");
        let c = conditions_table(&rows);
        assert!(c.contains("failed: boom \\| bang"), "{c}");
        assert!(c.contains("1100 900 1000"), "{c}");
        assert!(c.contains("200 150 ?"), "{c}");
        assert!(
            c.contains("first \"completed\" had total-time/downtime 0 in 1 of 3 runs"),
            "{c}"
        );
        let checks = check_lines(&rows);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert!(
            checks[0].starts_with("512 MiB, dirty 20 MiB/s, tern: median overhead 200 ms"),
            "{checks:?}"
        );
    }

    #[test]
    fn breakdown_rows_name_the_driver() {
        let mut r = done(700, 500);
        if let Outcome::Done(run) = &mut r {
            run.breakdown = Some(Breakdown {
                prepare: Some(90),
                copy: Some(505),
                qemu_total_ms: 500,
                ..Default::default()
            });
        }
        let rows = vec![Row {
            case: Case {
                memory_mib: 256,
                dirty_mib_s: 0,
            },
            drivers: vec![runs(Driver::Qmp, vec![r])],
            other_qemus: 0,
            load: None,
        }];
        let b = breakdown_table(&rows);
        assert!(b.contains(" QMP |"), "{b}");
        assert!(b.contains("505 (500)"), "{b}");
        assert!(b.contains(" 200 |"), "{b}");
    }

    #[test]
    fn crashed_guest_is_marked() {
        let run = Run {
            wall: Duration::from_millis(900),
            figures: Figures {
                total_ms: 800,
                ..Default::default()
            },
            crash: Some("BUG: kernel NULL pointer dereference".into()),
            ..Default::default()
        };
        assert_eq!(cells(Some(&Outcome::Done(run)))[3], "crash‡");
    }
}
