//! The zero-page fraction the in-run forecast needs, when no forecast
//! before the run sampled it.
//!
//! A plain `tern migrate` (no `migrate-forecast` first) left the follower
//! without a zero fraction, so it priced every page left as data. QEMU
//! sends an idle guest's data first and its zero pages last, and the
//! forecasts at 25, 50 and 75 % of such a run said +63, +133 and +246 %
//! of what followed (the recorded trace `idle-unlimited-counts.jsonl`;
//! `tern-bench transports` saw +100-300 %). The source now samples the
//! fraction itself, once, in the background, as soon as QEMU says how
//! much memory there is: the same `pmemsave` sample as `migrate-forecast`
//! (a few hundred pages), which reads guest memory and dirties none.

use std::path::PathBuf;
use tern_migrate::forecast::Follower;
use tokio::sync::oneshot::{self, error::TryRecvError};

/// Where the sample stands.
#[derive(Debug)]
pub(super) enum ZeroSample {
    /// The follower has its fraction (from a forecast before the run, or
    /// from this sample), or the sample failed: nothing to do.
    Settled,
    /// To be taken through this file once the memory size is known.
    Due(PathBuf),
    /// Being taken.
    Sampling(oneshot::Receiver<f64>),
}

impl ZeroSample {
    /// One look: starts the sample when `memory` is known, and hands its
    /// result to `follower` once it is in (returned then, for the job's
    /// events).
    pub(super) fn step(
        &mut self,
        qmp: &tern_qemu::Qmp,
        memory: u64,
        follower: &mut Follower,
    ) -> Option<f64> {
        let mut learned = None;
        *self = match std::mem::replace(self, ZeroSample::Settled) {
            ZeroSample::Due(file) if memory > 0 => {
                let (tx, rx) = oneshot::channel();
                let qmp = qmp.clone();
                tokio::spawn(async move {
                    let pages = super::super::forecast::read_pages_into(&qmp, &file, memory).await;
                    if !pages.is_empty() {
                        let _ = tx.send(super::super::forecast::zero_fraction(&pages));
                    }
                });
                ZeroSample::Sampling(rx)
            }
            ZeroSample::Sampling(mut rx) => match rx.try_recv() {
                Ok(z) => {
                    follower.learn_zero_fraction(z);
                    learned = Some(z);
                    ZeroSample::Settled
                }
                Err(TryRecvError::Empty) => ZeroSample::Sampling(rx),
                Err(TryRecvError::Closed) => ZeroSample::Settled,
            },
            other => other,
        };
        learned
    }
}
