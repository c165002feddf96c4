//! `--lr-schedule`: the learning rate of each step as a pure function of the step's index, so
//! that a resumed run takes the steps the uninterrupted one took.

use std::f64::consts::PI;

use crate::artifact::checkpoint::LrSchedule;

/// OneCycleLR's defaults (PyTorch): the share of steps spent rising, the start's divisor of
/// the peak, and the end's divisor of the start.
const PCT_START: f64 = 0.3;
const DIV_FACTOR: f64 = 25.0;
const FINAL_DIV_FACTOR: f64 = 1e4;

/// The rate of step `step` (0-based) of `total` under `schedule`, `lr` being its peak, after a
/// linear warmup over the first `warmup` steps (`lr / warmup` at the first, `lr` at the last;
/// the schedule then runs over the steps that remain, as `--warmup-epochs` says). `total` 0
/// (unknown) or a step past the end keeps the last value.
pub fn rate(schedule: LrSchedule, lr: f64, step: u64, total: u64, warmup: u64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let (step, total) = (step - warmup, total.saturating_sub(warmup));
    match schedule {
        LrSchedule::Constant => lr,
        LrSchedule::Cosine => {
            // PyTorch's CosineAnnealingLR with T_max = total and eta_min = 0.
            let t = step.min(total) as f64 / total.max(1) as f64;
            lr * 0.5 * (1.0 + (PI * t).cos())
        }
        LrSchedule::OneCycle => {
            // PyTorch's OneCycleLR: the peak at step 0.3 * total - 1, the end at total - 1.
            let initial = lr / DIV_FACTOR;
            let min = initial / FINAL_DIV_FACTOR;
            let peak_at = PCT_START * total as f64 - 1.0;
            let end = total.saturating_sub(1) as f64;
            let s = (step as f64).min(end);
            if s <= peak_at {
                anneal(initial, lr, s / peak_at)
            } else {
                anneal(lr, min, (s - peak_at) / (end - peak_at))
            }
        }
    }
}

/// Cosine from `start` (at 0) to `end` (at 1).
fn anneal(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300)
    }

    #[test]
    fn constant_is_the_rate_at_every_step() {
        for step in [0, 1, 99, 1000] {
            assert_eq!(rate(LrSchedule::Constant, 0.001, step, 100, 0), 0.001);
        }
    }

    #[test]
    fn cosine_falls_from_the_rate_to_zero() {
        let lr = 0.01;
        assert_eq!(rate(LrSchedule::Cosine, lr, 0, 1000, 0), lr);
        assert!(close(rate(LrSchedule::Cosine, lr, 500, 1000, 0), lr / 2.0));
        assert!(close(
            rate(LrSchedule::Cosine, lr, 250, 1000, 0),
            lr * 0.5 * (1.0 + (PI / 4.0).cos())
        ));
        assert!(rate(LrSchedule::Cosine, lr, 1000, 1000, 0).abs() < 1e-18);
        // The last step trained is just above zero.
        let last = rate(LrSchedule::Cosine, lr, 999, 1000, 0);
        assert!(last > 0.0 && last < 1e-6 * lr * 100.0, "{last}");
    }

    #[test]
    fn onecycle_rises_to_the_rate_at_thirty_percent_and_ends_near_zero() {
        let (lr, total) = (0.01, 1000);
        assert!(close(
            rate(LrSchedule::OneCycle, lr, 0, total, 0),
            lr / 25.0
        ));
        // PyTorch's peak: step 0.3 * 1000 - 1 = 299.
        assert!(close(rate(LrSchedule::OneCycle, lr, 299, total, 0), lr));
        assert!(rate(LrSchedule::OneCycle, lr, 298, total, 0) < lr);
        assert!(rate(LrSchedule::OneCycle, lr, 300, total, 0) < lr);
        assert!(close(
            rate(LrSchedule::OneCycle, lr, 999, total, 0),
            lr / 25.0 / 1e4
        ));
        let mid = rate(LrSchedule::OneCycle, lr, 149, 1000, 0);
        let expected = anneal(lr / 25.0, lr, 149.0 / 299.0);
        assert!(close(mid, expected));
    }

    #[test]
    fn warmup_rises_linearly_to_the_rate_then_the_schedule_runs_over_the_rest() {
        let lr = 0.01;
        // Constant: lr/4, lr/2, 3lr/4, lr, then lr.
        for (step, want) in [
            (0, lr / 4.0),
            (1, lr / 2.0),
            (2, 0.75 * lr),
            (3, lr),
            (9, lr),
        ] {
            assert!(
                close(rate(LrSchedule::Constant, lr, step, 0, 4), want),
                "{step}"
            );
        }
        // Cosine over 1000 steps with 100 of warmup: the cosine spans the 900 after it.
        assert!(close(rate(LrSchedule::Cosine, lr, 49, 1000, 100), lr / 2.0));
        assert_eq!(rate(LrSchedule::Cosine, lr, 100, 1000, 100), lr);
        assert!(close(
            rate(LrSchedule::Cosine, lr, 550, 1000, 100),
            lr / 2.0
        ));
        assert!(rate(LrSchedule::Cosine, lr, 1000, 1000, 100).abs() < 1e-18);
    }
}
