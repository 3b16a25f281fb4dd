//! The fault model: toxiproxy's toxics as flags, decided once per
//! connection (`--toxicity`, from a seeded generator so a run repeats) and
//! applied to each chunk one direction carries.
//!
//! A chunk is what one read returned, not a message: a later scripted mode
//! puts framing in front of this, and the same toxics then apply per
//! message.

use std::time::Duration;

use tokio::time::Instant;

/// Which way a toxic applies: `up` is client to upstream, `down` upstream
/// to client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Direction {
    Up,
    Down,
    Both,
}

impl Direction {
    pub(crate) fn includes(self, way: Way) -> bool {
        matches!(
            (self, way),
            (Direction::Both, _) | (Direction::Up, Way::Up) | (Direction::Down, Way::Down)
        )
    }
}

/// One of the two directions of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    Up,
    Down,
}

/// `--slice SIZE[:VARIATION[:DELAY]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) size: usize,
    pub(crate) variation: usize,
    pub(crate) delay: Duration,
}

impl Slice {
    pub(crate) fn parse(text: &str) -> Result<Slice, String> {
        let mut parts = text.splitn(3, ':');
        let size = crate::cli::parse_size(parts.next().unwrap_or(""))?;
        let variation = match parts.next() {
            None | Some("") => 0,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("`{v}` is not a number of bytes"))?,
        };
        if variation >= size {
            return Err(format!(
                "the variation {variation} must be less than the size {size}, \
                 or a piece could be empty"
            ));
        }
        let delay = match parts.next() {
            None => Duration::ZERO,
            Some(d) => crate::cli::parse_retry(d)?,
        };
        Ok(Slice {
            size,
            variation,
            delay,
        })
    }
}

/// Every toxic the flags asked for; `None` (or zero) when not asked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Toxics {
    pub(crate) latency: Option<Duration>,
    pub(crate) jitter: Duration,
    /// Bytes per second.
    pub(crate) bandwidth: Option<usize>,
    pub(crate) slice: Option<Slice>,
    pub(crate) limit_data: Option<u64>,
    pub(crate) reset_after: Option<Duration>,
    pub(crate) blackhole_after: Option<Duration>,
    pub(crate) slow_close: Option<Duration>,
    pub(crate) direction: Option<Direction>,
    /// `--udp`: the chance that a datagram is lost, sent twice, or held
    /// back until the next one overtakes it; each 0 to 1.
    pub(crate) loss: f64,
    pub(crate) duplicate: f64,
    pub(crate) reorder: f64,
    /// The fraction of connections the toxics apply to, 0 to 1.
    pub(crate) toxicity: f64,
}

impl Toxics {
    pub(crate) fn any(&self) -> bool {
        self.latency.is_some()
            || self.bandwidth.is_some()
            || self.slice.is_some()
            || self.limit_data.is_some()
            || self.reset_after.is_some()
            || self.blackhole_after.is_some()
            || self.slow_close.is_some()
            || self.loss > 0.0
            || self.duplicate > 0.0
            || self.reorder > 0.0
    }

    /// What one connection gets: nothing, unless the draw from its own
    /// generator falls under `--toxicity`.
    pub(crate) fn plan(&self, rng: &mut SplitMix64, connected: Instant) -> Option<Plan> {
        if !self.any() || rng.unit() >= self.toxicity {
            return None;
        }
        let direction = self.direction.unwrap_or(Direction::Both);
        let mut way = |way: Way| {
            direction.includes(way).then(|| Shaper {
                latency: self.latency,
                jitter: self.jitter,
                bandwidth: self.bandwidth,
                slice: self.slice,
                limit_left: self.limit_data,
                blackhole_at: self.blackhole_after.map(|d| connected + d),
                slow_close: self.slow_close,
                loss: self.loss,
                duplicate: self.duplicate,
                reorder: self.reorder,
                next_free: connected,
                rng: SplitMix64::new(rng.next()),
            })
        };
        Some(Plan {
            up: way(Way::Up),
            down: way(Way::Down),
            reset_at: self.reset_after.map(|d| connected + d),
        })
    }
}

/// The toxics one connection gets.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) up: Option<Shaper>,
    pub(crate) down: Option<Shaper>,
    /// `--reset-after`: a connection-wide fault, whatever `--direction` says.
    pub(crate) reset_at: Option<Instant>,
}

/// What a shaped direction does with a chunk.
pub(crate) enum Verdict {
    /// Forward it in pieces, `delay` before each.
    Forward,
    /// `--blackhole-after` has passed: read and discard.
    Discard,
    /// `--limit-data`: forward this many bytes of it, then close both sides.
    Last(usize),
}

/// One direction's toxics and their running state.
#[derive(Debug)]
pub(crate) struct Shaper {
    latency: Option<Duration>,
    jitter: Duration,
    bandwidth: Option<usize>,
    slice: Option<Slice>,
    limit_left: Option<u64>,
    blackhole_at: Option<Instant>,
    slow_close: Option<Duration>,
    loss: f64,
    duplicate: f64,
    reorder: f64,
    /// `--bandwidth`: when the bytes already sent will have gone out at
    /// the rate.
    next_free: Instant,
    rng: SplitMix64,
}

/// What the faults do to one datagram.
pub(crate) enum Fate {
    Once,
    Twice,
    Lost,
    /// Held back until the next one overtakes it.
    Held,
}

impl Shaper {
    /// `--loss`, `--duplicate`, `--reorder`: one draw each, in that order,
    /// so that a seed gives the same fates run after run.
    pub(crate) fn datagram_fate(&mut self) -> Fate {
        let (lost, twice, held) = (self.rng.unit(), self.rng.unit(), self.rng.unit());
        if lost < self.loss {
            Fate::Lost
        } else if twice < self.duplicate {
            Fate::Twice
        } else if held < self.reorder {
            Fate::Held
        } else {
            Fate::Once
        }
    }

    /// What to do with `len` bytes just read.
    pub(crate) fn judge(&mut self, len: usize) -> Verdict {
        if self.blackholed() {
            return Verdict::Discard;
        }
        match &mut self.limit_left {
            Some(left) if (len as u64) >= *left => {
                let last = *left as usize;
                *left = 0;
                Verdict::Last(last)
            }
            Some(left) => {
                *left -= len as u64;
                Verdict::Forward
            }
            None => Verdict::Forward,
        }
    }

    pub(crate) fn blackholed(&self) -> bool {
        self.blackhole_at.is_some_and(|at| Instant::now() >= at)
    }

    /// The delay of a chunk read at `read_at`: latency plus or minus
    /// jitter, counted from the read.
    pub(crate) fn chunk_due(&mut self, read_at: Instant) -> Instant {
        let Some(latency) = self.latency else {
            return read_at;
        };
        let jitter = self.jitter.as_nanos() as u64;
        let delay = if jitter == 0 {
            latency
        } else {
            // Uniform in [latency - jitter, latency + jitter], never below 0.
            let offset = self.rng.below(2 * jitter + 1);
            let nanos = (latency.as_nanos() as u64 + offset).saturating_sub(jitter);
            Duration::from_nanos(nanos)
        };
        read_at + delay
    }

    /// The next piece of `rest` to write, and the pause before the piece
    /// after it.
    pub(crate) fn piece(&mut self, rest: usize) -> (usize, Duration) {
        let (mut size, delay) = match self.slice {
            None => (rest, Duration::ZERO),
            Some(slice) => {
                let spread = 2 * slice.variation as u64 + 1;
                let size = slice.size + self.rng.below(spread) as usize - slice.variation;
                (size, slice.delay)
            }
        };
        if let Some(rate) = self.bandwidth {
            // A tenth of a second's worth at most: the rate holds over
            // short spans too, not only on average over a big buffer.
            size = size.min((rate / 10).max(1));
        }
        (size.min(rest), delay)
    }

    /// When a piece of `len` bytes may be written under `--bandwidth`:
    /// once it would have gone through a link of that rate, so that the
    /// last piece too takes its time (100 KiB at 200 KiB/s: 0.5 s).
    pub(crate) fn piece_due(&mut self, len: usize) -> Option<Instant> {
        let rate = self.bandwidth?;
        let start = self.next_free.max(Instant::now());
        self.next_free = start + Duration::from_secs_f64(len as f64 / rate as f64);
        Some(self.next_free)
    }

    pub(crate) fn slow_close(&self) -> Option<Duration> {
        self.slow_close
    }
}

/// A small seeded generator (splitmix64): the same seed gives the same
/// connections their toxics and the same jitter, run after run.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The generator of the `index`th connection: independent of how
    /// connections interleave, so a repeated run picks the same ones.
    pub(crate) fn for_connection(seed: u64, index: u64) -> Self {
        let mut mixer = SplitMix64(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
        SplitMix64(mixer.next())
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n), n > 0 (the modulo bias is far below what a
    /// fault model notices).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A seed for a run without `--seed`.
pub(crate) fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    SplitMix64::new(nanos ^ u64::from(std::process::id()).rotate_left(32)).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_parse_with_optional_parts() {
        assert_eq!(
            Slice::parse("100"),
            Ok(Slice {
                size: 100,
                variation: 0,
                delay: Duration::ZERO
            })
        );
        assert_eq!(
            Slice::parse("1KiB:10:5ms"),
            Ok(Slice {
                size: 1024,
                variation: 10,
                delay: Duration::from_millis(5)
            })
        );
        for bad in ["0", "10:10", "x", "10:y", "10:1:soon"] {
            assert!(Slice::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limit_data_cuts_at_the_byte() {
        let toxics = Toxics {
            limit_data: Some(10),
            toxicity: 1.0,
            ..Toxics::default()
        };
        let plan = toxics
            .plan(&mut SplitMix64::new(1), Instant::now())
            .unwrap();
        let mut up = plan.up.unwrap();
        assert!(matches!(up.judge(6), Verdict::Forward));
        assert!(matches!(up.judge(6), Verdict::Last(4)));
    }

    #[test]
    fn slices_stay_within_the_variation() {
        let toxics = Toxics {
            slice: Some(Slice::parse("10:3").unwrap()),
            toxicity: 1.0,
            direction: Some(Direction::Down),
            ..Toxics::default()
        };
        let plan = toxics
            .plan(&mut SplitMix64::new(7), Instant::now())
            .unwrap();
        assert!(plan.up.is_none());
        let mut down = plan.down.unwrap();
        for _ in 0..1000 {
            let (size, _) = down.piece(1000);
            assert!((7..=13).contains(&size), "{size}");
        }
        assert_eq!(down.piece(2).0, 2);
    }

    #[test]
    fn toxicity_picks_the_same_connections_for_the_same_seed() {
        let toxics = Toxics {
            latency: Some(Duration::from_millis(1)),
            toxicity: 0.5,
            ..Toxics::default()
        };
        let picks = |seed| -> Vec<bool> {
            (0..64)
                .map(|i| {
                    let mut rng = SplitMix64::for_connection(seed, i);
                    toxics.plan(&mut rng, Instant::now()).is_some()
                })
                .collect()
        };
        assert_eq!(picks(42), picks(42));
        assert_ne!(picks(42), picks(43));
        let affected = picks(42).iter().filter(|&&p| p).count();
        assert!((16..=48).contains(&affected), "{affected}");
    }
}
