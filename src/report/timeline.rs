//! Load mode's figures second by second, for `--html`'s charts:
//! conversations, failures and a latency histogram per bucket of time.
//!
//! Memory is bounded whatever the run's length: at most [`MAX_BUCKETS`]
//! buckets, each one small histogram (2 significant digits, 13 KB); a run
//! that outgrows them merges neighbours and doubles the seconds each one
//! covers. Users do not lock per conversation: each fills its own
//! [`Second`] and hands it over when the clock moves to the next one.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Points on a chart's time axis: 10 minutes at one a second.
pub(crate) const MAX_BUCKETS: usize = 600;

/// What ended in one bucket of time.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    pub(crate) done: u64,
    pub(crate) failed: u64,
    /// Conversation durations in microseconds; `None` while empty, so an
    /// idle stretch costs no histogram.
    pub(crate) latency: Option<Histogram<u32>>,
}

impl Bucket {
    fn record(&mut self, micros: u64, failed: bool) {
        self.done += 1;
        self.failed += u64::from(failed);
        let latency = self.latency.get_or_insert_with(|| {
            // 1 µs to an hour, as the run's own histogram; 2 digits are
            // plenty for a line on a chart.
            Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static bounds are valid")
        });
        let _ = latency.record(micros.clamp(1, 3_600_000_000));
    }

    fn add(&mut self, other: &Bucket) {
        self.done += other.done;
        self.failed += other.failed;
        if let Some(theirs) = &other.latency {
            match &mut self.latency {
                Some(ours) => {
                    let _ = ours.add(theirs);
                }
                None => self.latency = Some(theirs.clone()),
            }
        }
    }

    /// The latency at quantile `q`, in milliseconds; `None` when empty.
    pub(crate) fn millis_at(&self, q: f64) -> Option<f64> {
        let latency = self.latency.as_ref()?;
        Some(latency.value_at_quantile(q) as f64 / 1000.0)
    }
}

#[derive(Debug)]
pub(crate) struct Timeline {
    /// Seconds each bucket covers.
    width: u64,
    buckets: Vec<Bucket>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            width: 1,
            buckets: Vec::new(),
        }
    }
}

impl Timeline {
    pub(crate) fn width(&self) -> u64 {
        self.width
    }

    /// Oldest first; bucket `i` covers seconds `i * width` to `(i + 1) * width`.
    pub(crate) fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    fn add(&mut self, second: u64, bucket: &Bucket) {
        while second / self.width >= MAX_BUCKETS as u64 {
            self.coarsen();
        }
        let index = (second / self.width) as usize;
        if self.buckets.len() <= index {
            self.buckets.resize_with(index + 1, Bucket::default);
        }
        self.buckets[index].add(bucket);
    }

    /// Merges neighbours: half as many buckets, each twice as long.
    fn coarsen(&mut self) {
        let old = std::mem::take(&mut self.buckets);
        let mut pairs = old.into_iter();
        while let Some(mut first) = pairs.next() {
            if let Some(second) = pairs.next() {
                first.add(&second);
            }
            self.buckets.push(first);
        }
        self.width *= 2;
    }
}

/// One user's conversations of the current second, not yet shared.
#[derive(Debug, Default)]
pub(crate) struct Second {
    index: u64,
    bucket: Bucket,
}

impl Second {
    /// Counts a conversation that ended `at` into the run; the previous
    /// second goes to `timeline` once this one is later.
    pub(crate) fn record(
        &mut self,
        at: Duration,
        micros: u64,
        failed: bool,
        timeline: &Mutex<Timeline>,
    ) {
        let index = at.as_secs();
        if index != self.index {
            self.flush(timeline);
            self.index = index;
        }
        self.bucket.record(micros, failed);
    }

    /// Hands what this second holds to `timeline`.
    pub(crate) fn flush(&mut self, timeline: &Mutex<Timeline>) {
        if self.bucket.done == 0 {
            return;
        }
        let bucket = std::mem::take(&mut self.bucket);
        timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(self.index, &bucket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_land_in_their_buckets() {
        let timeline = Mutex::new(Timeline::default());
        let mut second = Second::default();
        second.record(Duration::from_millis(100), 1000, false, &timeline);
        second.record(Duration::from_millis(900), 3000, true, &timeline);
        second.record(Duration::from_millis(2500), 2000, false, &timeline);
        second.flush(&timeline);
        let timeline = timeline.into_inner().unwrap();
        let buckets = timeline.buckets();
        assert_eq!(buckets.len(), 3);
        assert_eq!((buckets[0].done, buckets[0].failed), (2, 1));
        assert_eq!(buckets[1].done, 0);
        assert!(buckets[1].latency.is_none());
        assert_eq!(buckets[2].done, 1);
        // Two significant digits: within 1% of the slowest.
        let slowest = buckets[0].millis_at(1.0).unwrap();
        assert!((3.0..3.03).contains(&slowest), "{slowest}");
    }

    #[test]
    fn a_long_run_merges_buckets_and_stays_bounded() {
        let timeline = Mutex::new(Timeline::default());
        let mut second = Second::default();
        for s in 0..(MAX_BUCKETS as u64 * 3) {
            second.record(Duration::from_secs(s), 1000, false, &timeline);
        }
        second.flush(&timeline);
        let timeline = timeline.into_inner().unwrap();
        assert_eq!(timeline.width(), 4);
        assert!(timeline.buckets().len() <= MAX_BUCKETS);
        assert_eq!(timeline.buckets()[0].done, 4);
        let total: u64 = timeline.buckets().iter().map(|b| b.done).sum();
        assert_eq!(total, MAX_BUCKETS as u64 * 3);
    }
}
