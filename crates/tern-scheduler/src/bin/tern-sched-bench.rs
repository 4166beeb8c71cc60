//! `tern-sched-bench`: how long one scheduling decision takes for 10,
//! 1 000 and 10 000 simulated hosts; prints p50 and p99 as a table.

use std::time::{Duration, Instant};
use tern_scheduler::{schedule, sim, Limits, MoveKind, MoveRequest};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let limits = Limits::default();
    println!("| hosts  | decisions | p50        | p99        | max        |");
    println!("|-------:|----------:|-----------:|-----------:|-----------:|");
    for &n in &[10usize, 1_000, 10_000] {
        let hosts = sim::hosts(n, 42);
        let rounds = if n >= 10_000 { 500 } else { 2_000 };
        let mut times = Vec::with_capacity(rounds);
        let mut rng = sim::Rng::new(7);
        let mut placed = 0usize;
        for i in 0..rounds {
            let src = &hosts[rng.below(n as u64) as usize];
            let server = sim::server(&src.name);
            let req = MoveRequest {
                kind: if i % 2 == 0 {
                    MoveKind::Live
                } else {
                    MoveKind::Cold
                },
                ..Default::default()
            };
            let t = Instant::now();
            let r = schedule(&req, &server, &hosts, &limits);
            times.push(t.elapsed());
            placed += usize::from(std::hint::black_box(r).is_ok());
        }
        times.sort();
        println!(
            "| {n:>6} | {rounds:>9} | {:>7.3} ms | {:>7.3} ms | {:>7.3} ms |",
            pct(&times, 0.5).as_secs_f64() * 1e3,
            pct(&times, 0.99).as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
        );
        if placed == 0 {
            eprintln!("warning: no decision found a host for {n} hosts");
        }
    }
}
