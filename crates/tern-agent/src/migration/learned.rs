//! What finished migrations teach the next forecasts on this host: the
//! pace they achieved, that pace over the copy speed and over the loopback
//! probe their forecasts measured just before, and how far each estimate
//! of one migration thread's rate missed. All moving averages, kept in
//! memory (a restarted agent learns again from its next migration).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tern_migrate::forecast::{learn, learn_error, EstimateErrors};
use tern_migrate::policy::Forecast;

/// A forecast older than this says nothing about the migration that
/// finished (it was made for another one, or long before).
const FORECAST_MAX_AGE: Duration = Duration::from_secs(120);

/// The learned figures, each behind its own lock.
#[derive(Debug, Default)]
pub struct Learned {
    /// The last forecast of each domain, for the policy's start plan and
    /// for learning against when its migration finishes.
    forecasts: Mutex<HashMap<String, (Instant, Forecast)>>,
    /// Moving average of the pace (bytes/s) of outgoing migrations.
    pace: Mutex<Option<u64>>,
    /// Moving average of migration pace over the copy speed measured by
    /// the forecast before it (see `tern_migrate::forecast::THREAD_PER_CPU`).
    thread_ratio: Mutex<Option<f64>>,
    /// Moving average of migration pace over the loopback probe measured
    /// by the forecast before it (see
    /// `tern_migrate::forecast::THREAD_PER_LOOPBACK_PROBE`).
    probe_ratio: Mutex<Option<f64>>,
    /// How far the probe-scaled and the pace estimates of the thread rate
    /// missed, as learned so far (probe, pace).
    errors: Mutex<(Option<f64>, Option<f64>)>,
}

fn read<T: Copy>(m: &Mutex<T>) -> T {
    *m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Learned {
    /// Keeps a domain's forecast for the start plan of its next migration.
    pub fn remember_forecast(&self, domain: &str, f: Forecast) {
        let mut m = self.forecasts.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(domain.to_string(), (Instant::now(), f));
    }

    /// A domain's forecast, if it was made less than `max_age` ago.
    pub fn fresh_forecast(&self, domain: &str, max_age: Duration) -> Option<Forecast> {
        let m = self.forecasts.lock().unwrap_or_else(|p| p.into_inner());
        m.get(domain)
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, f)| f.clone())
    }

    /// The pace past outgoing migrations achieved, bytes/s.
    pub fn pace(&self) -> Option<u64> {
        read(&self.pace)
    }

    /// Past migrations' pace over the copy speed their forecasts measured.
    pub fn thread_ratio(&self) -> Option<f64> {
        read(&self.thread_ratio)
    }

    /// Past migrations' pace over the loopback probe their forecasts
    /// measured.
    pub fn probe_ratio(&self) -> Option<f64> {
        read(&self.probe_ratio)
    }

    /// How far the two thread-rate estimates missed on past migrations,
    /// once both were tried (see `tern_migrate::forecast::EstimateErrors`).
    pub fn estimate_errors(&self) -> Option<EstimateErrors> {
        match read(&self.errors) {
            (Some(probe), Some(pace)) => Some(EstimateErrors { probe, pace }),
            _ => None,
        }
    }

    /// Learns from an outgoing migration of `domain` that achieved `pace`
    /// (`JobInfo::pace_sample`): first how far each estimate, as it stood
    /// before, missed; then the pace and the ratios themselves.
    pub fn learn(&self, domain: &str, pace: u64) {
        let before = self.pace();
        let f = self.fresh_forecast(domain, FORECAST_MAX_AGE);
        if let Some(f) = &f {
            self.learn_errors(f, pace, before);
        }
        *self.pace.lock().unwrap_or_else(|p| p.into_inner()) = Some(match before {
            Some(old) => (old * 3 + pace) / 4,
            None => pace,
        });
        if let Some(f) = &f {
            let ratio = |slot: &Mutex<Option<f64>>, measured: u64| {
                if measured == 0 {
                    return;
                }
                let mut r = slot.lock().unwrap_or_else(|p| p.into_inner());
                *r = Some(learn(*r, pace as f64 / measured as f64));
            };
            ratio(&self.thread_ratio, f.cpu_rate);
            ratio(&self.probe_ratio, f.loopback_probe);
        }
    }

    /// How far each thread-rate estimate missed the pace achieved: the
    /// forecast's probe reading times the probe ratio, and `pace_before`.
    fn learn_errors(&self, f: &Forecast, pace: u64, pace_before: Option<u64>) {
        let achieved = pace as f64;
        let probe_est = self
            .probe_ratio()
            .map_or(0.0, |r| f.loopback_probe as f64 * r);
        let pace_est = pace_before.unwrap_or(0) as f64;
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        e.0 = learn_error(e.0, probe_est, achieved);
        e.1 = learn_error(e.1, pace_est, achieved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecast(probe: u64) -> Forecast {
        Forecast {
            loopback_probe: probe,
            cpu_rate: probe * 4,
            ..Forecast::default()
        }
    }

    #[test]
    fn errors_are_known_once_both_estimates_were_tried() {
        let l = Learned::default();
        l.remember_forecast("vm", forecast(1000));
        l.learn("vm", 300);
        // The first migration: ratios and pace learned, no estimate yet.
        assert_eq!(l.pace(), Some(300));
        assert!((l.probe_ratio().unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(l.estimate_errors(), None);
        // The probe read twice as high; the pace held: the probe missed.
        l.remember_forecast("vm", forecast(2000));
        l.learn("vm", 300);
        let e = l.estimate_errors().unwrap();
        assert!(e.probe > 0.4 && e.pace < 1e-9, "{e:?}");
    }

    #[test]
    fn without_a_fresh_forecast_only_the_pace_is_learned() {
        let l = Learned::default();
        l.learn("vm", 500);
        assert_eq!(l.pace(), Some(500));
        assert_eq!(l.probe_ratio(), None);
        assert_eq!(l.estimate_errors(), None);
    }
}
