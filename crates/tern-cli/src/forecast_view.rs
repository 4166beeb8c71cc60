//! `migrate-forecast` and `migrate --dry-run`: the source's forecast of a
//! migration, printed as a table (or JSON) with each input's source.

use crate::table::kv;
use crate::{print_json, Result};
use tern_api::{Client, MigrationRequest, Request};
use tern_migrate::policy::Forecast;
use tern_migrate::MigrateOptions;

pub(crate) async fn forecast(
    src: &Client,
    name: &str,
    dest: Option<&str>,
    o: &MigrateOptions,
    json: bool,
) -> Result<()> {
    let f: Forecast = src
        .call(&Request::Migration(MigrationRequest::MigrateForecast {
            name: name.to_string(),
            dest_uri: dest.map(str::to_string),
            options: o.clone(),
        }))
        .await?;
    if json {
        print_json(&f);
        return Ok(());
    }
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    print!(
        "{}",
        kv(&[
            ("Memory", mib(f.memory)),
            ("Zero pages", format!("{:.0} %", f.zero_fraction * 100.0)),
            ("Dirty rate", format!("{}/s", mib(f.dirty_rate))),
            (
                "Bandwidth",
                format!("{}/s ({})", mib(f.bandwidth), f.bandwidth_source)
            ),
            ("Downtime limit", format!("{} ms", f.downtime_limit_ms)),
            (
                "Converges",
                if f.prediction.converges { "yes" } else { "no" }.into()
            ),
            ("Iterations", f.prediction.iterations.to_string()),
            (
                "Total time",
                forecast_span(f.prediction.total_ms, f.range.as_ref().map(|r| r.total))
            ),
            (
                "Downtime",
                forecast_span(
                    f.prediction.downtime_ms,
                    f.range.as_ref().map(|r| r.downtime)
                )
            ),
            (
                "Page deltas",
                f.delta_fraction
                    .map_or("no sampled page changed".into(), |d| {
                        format!("{:.0} % of a rewritten page", d * 100.0)
                    })
            ),
            ("Compression", format!("{:.1}x (zstd)", f.compress_ratio)),
            (
                "Start plan",
                f.plan
                    .as_ref()
                    .map_or("none (plain pre-copy)".into(), |p| p.reason.clone())
            ),
            ("Verdict", f.verdict.clone()),
        ])
    );
    if let Some(r) = &f.range {
        print!("{}", forecast_inputs(&r.inputs));
    }
    Ok(())
}

/// "1200 ms (p10-p90 900-1800 ms)" when the agent gave a range.
fn forecast_span(median: u64, r: Option<tern_migrate::forecast::Range>) -> String {
    match r {
        Some(r) => format!("{} ms (p10-p90 {}-{} ms)", r.p50_ms, r.p10_ms, r.p90_ms),
        None => format!("{median} ms"),
    }
}

/// The forecast's inputs, one line each: median, p10-p90, source.
fn forecast_inputs(i: &tern_migrate::forecast::Inputs) -> String {
    use tern_migrate::forecast::Estimate;
    let rate = |e: &Estimate| {
        format!(
            "{:.0} MiB/s ({:.0}-{:.0}): {}",
            e.p50 / 1048576.0,
            e.p10 / 1048576.0,
            e.p90 / 1048576.0,
            e.source
        )
    };
    let ms = |e: &Estimate| format!("{:.0} ms ({:.0}-{:.0}): {}", e.p50, e.p10, e.p90, e.source);
    kv(&[
        (
            "Input: zero pages",
            format!(
                "{:.0} % ({:.0}-{:.0}): {}",
                i.zero_fraction.p50 * 100.0,
                i.zero_fraction.p10 * 100.0,
                i.zero_fraction.p90 * 100.0,
                i.zero_fraction.source
            ),
        ),
        ("Input: send rate", rate(&i.send_rate)),
        ("Input: thread rate", rate(&i.thread_rate)),
        ("Input: dirty rate", rate(&i.dirty_rate)),
        ("Input: setup", ms(&i.setup_ms)),
        ("Input: switch-over", ms(&i.switch_ms)),
    ])
}
