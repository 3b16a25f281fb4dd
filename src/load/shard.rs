//! `--shard K/N`: one of N machines' share of a load test, with no
//! coordinator: each shard works out its own slice of the users, the
//! iterations and the rate from K and N alone, and `tcpscript merge` adds
//! their `--hist-out` files up. `--shard auto/N` takes K from
//! `JOB_COMPLETION_INDEX` (0-based), which a Kubernetes Indexed Job sets
//! for each of its pods.

use std::fmt;
use std::time::{Duration, SystemTime};

use thiserror::Error;

use super::Until;

/// The variable a Kubernetes Indexed Job sets: the pod's index from 0.
pub(crate) const INDEX_VARIABLE: &str = "JOB_COMPLETION_INDEX";

/// `--start-at` further ahead than this is most likely a mistake (a
/// timestamp in milliseconds, a date in the wrong year).
pub(crate) const MAX_START_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// `--shard` as given: K may wait for the environment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ShardSpec {
    /// `None`: `auto`, from [`INDEX_VARIABLE`].
    index: Option<u64>,
    count: u64,
}

/// A shard once K is known: 1 ≤ `index` ≤ `count`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shard {
    pub(crate) index: u64,
    pub(crate) count: u64,
}

#[derive(Debug, Error, PartialEq)]
pub(crate) enum ShardError {
    #[error(
        "`{0}` is not K/N: give the shard's number from 1 and the number of shards, e.g. 2/4, or auto/4"
    )]
    Syntax(String),
    #[error("`{0}`: K must be from 1 to N")]
    OutOfRange(String),
    #[error("--shard auto/{count} takes K from {INDEX_VARIABLE}, which is not set")]
    NoIndex { count: u64 },
    #[error("--shard auto/{count}: {INDEX_VARIABLE}={value} is not an index from 0 to {}", count - 1)]
    BadIndex { count: u64, value: String },
    #[error("--shard {shard}: {what} {total} leaves this shard none; give at least {}", shard.count)]
    Empty {
        shard: Shard,
        what: &'static str,
        total: u64,
    },
}

impl ShardSpec {
    pub(crate) fn parse(text: &str) -> Result<ShardSpec, ShardError> {
        let syntax = || ShardError::Syntax(text.to_string());
        let (k, n) = text.trim().split_once('/').ok_or_else(syntax)?;
        let count: u64 = n.trim().parse().map_err(|_| syntax())?;
        let index = match k.trim() {
            "auto" => None,
            k => Some(k.parse::<u64>().map_err(|_| syntax())?),
        };
        if count == 0 || index.is_some_and(|k| k == 0 || k > count) {
            return Err(ShardError::OutOfRange(text.to_string()));
        }
        Ok(ShardSpec { index, count })
    }

    /// K from the flag, or from `index_variable` (the environment's
    /// [`INDEX_VARIABLE`]) for `auto`.
    pub(crate) fn resolve(&self, index_variable: Option<&str>) -> Result<Shard, ShardError> {
        let count = self.count;
        let index = match self.index {
            Some(index) => index,
            None => {
                let value = index_variable.ok_or(ShardError::NoIndex { count })?;
                match value.trim().parse::<u64>() {
                    Ok(i) if i < count => i + 1,
                    _ => {
                        return Err(ShardError::BadIndex {
                            count,
                            value: value.to_string(),
                        });
                    }
                }
            }
        };
        Ok(Shard { index, count })
    }
}

/// For clap.
pub(crate) fn parse_arg(text: &str) -> Result<ShardSpec, String> {
    ShardSpec::parse(text).map_err(|e| e.to_string())
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// This shard's part of the whole test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Slice {
    pub(crate) users: usize,
    pub(crate) until: Until,
    pub(crate) rate: Option<f64>,
}

impl Shard {
    /// This shard's share of `total`: an equal part, and one more for each
    /// of the first `total % N` shards, so the N shares add up exactly.
    pub(crate) fn share(&self, total: u64) -> u64 {
        let extra = u64::from(self.index - 1 < total % self.count);
        total / self.count + extra
    }

    /// The users, the iterations and the rate of this shard; a duration is
    /// every shard's. A shard left with no users or no iterations is an
    /// error: it would measure nothing and its file would look like a
    /// failed machine's.
    pub(crate) fn slice(
        &self,
        users: usize,
        until: Until,
        rate: Option<f64>,
    ) -> Result<Slice, ShardError> {
        let empty = |what, total| ShardError::Empty {
            shard: *self,
            what,
            total,
        };
        let my_users = self.share(users as u64);
        if my_users == 0 {
            return Err(empty("--concurrency", users as u64));
        }
        let until = match until {
            Until::Iterations(total) => match self.share(total) {
                0 => return Err(empty("--iterations", total)),
                mine => Until::Iterations(mine),
            },
            elapsed => elapsed,
        };
        Ok(Slice {
            users: my_users as usize,
            until,
            rate: rate.map(|r| r / self.count as f64),
        })
    }
}

/// `--start-at`: RFC 3339 (`2026-05-01T12:00:00Z`; without a zone, UTC)
/// or seconds since 1970.
pub(crate) fn parse_start_at(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .ok()
            .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
            .ok_or_else(|| {
                format!("`{text}` is not a time: give seconds since 1970 of 0 or more")
            });
    }
    humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("`{text}` is not a time ({e}): give RFC 3339, e.g. 2026-05-01T12:00:00Z, or seconds since 1970")
    })
}

/// How long to wait for `start`, from `now`: zero when it has passed; an
/// error past [`MAX_START_WAIT`].
pub(crate) fn wait_for(start: SystemTime, now: SystemTime) -> Result<Duration, String> {
    let wait = start.duration_since(now).unwrap_or_default();
    if wait > MAX_START_WAIT {
        return Err(format!(
            "--start-at {} is {} ahead, more than the limit of 24h",
            humantime::format_rfc3339_seconds(start),
            humantime::format_duration(Duration::from_secs(wait.as_secs()))
        ));
    }
    Ok(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(index: u64, count: u64) -> Shard {
        Shard { index, count }
    }

    #[test]
    fn shares_add_up_to_the_whole() {
        for total in [1u64, 2, 7, 10, 999, 1_000_003] {
            for count in 1..=7 {
                let shares: Vec<u64> = (1..=count).map(|k| shard(k, count).share(total)).collect();
                assert_eq!(shares.iter().sum::<u64>(), total, "{total} in {count}");
                let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(max - min <= 1, "{shares:?}");
            }
        }
        assert_eq!(shard(1, 1).share(42), 42);
        // The first shards take the remainder.
        assert_eq!([1, 2, 3].map(|k| shard(k, 3).share(10)), [4, 3, 3]);
    }

    #[test]
    fn a_slice_divides_users_iterations_and_rate() {
        let slice = shard(2, 4)
            .slice(10, Until::Iterations(1001), Some(100.0))
            .unwrap();
        assert_eq!(slice.users, 3);
        assert_eq!(slice.until, Until::Iterations(250));
        assert_eq!(slice.rate, Some(25.0));
        let duration = Until::Elapsed(Duration::from_secs(5));
        assert_eq!(
            shard(3, 3).slice(3, duration, None).unwrap().until,
            duration
        );
    }

    #[test]
    fn a_shard_left_with_nothing_is_refused() {
        let error = shard(3, 3)
            .slice(2, Until::Iterations(9), None)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--shard 3/3: --concurrency 2 leaves this shard none; give at least 3"
        );
        assert!(shard(3, 3).slice(3, Until::Iterations(2), None).is_err());
    }

    #[test]
    fn specs_parse_and_resolve() {
        assert_eq!(
            ShardSpec::parse("2/4").unwrap().resolve(None),
            Ok(shard(2, 4))
        );
        let auto = ShardSpec::parse("auto/4").unwrap();
        assert_eq!(auto.resolve(Some("0")), Ok(shard(1, 4)));
        assert_eq!(auto.resolve(Some("3")), Ok(shard(4, 4)));
        assert_eq!(auto.resolve(None), Err(ShardError::NoIndex { count: 4 }));
        assert!(matches!(
            auto.resolve(Some("4")),
            Err(ShardError::BadIndex { .. })
        ));
        assert!(matches!(
            auto.resolve(Some("x")),
            Err(ShardError::BadIndex { .. })
        ));
        for bad in ["0/4", "5/4", "1/0"] {
            assert_eq!(
                ShardSpec::parse(bad),
                Err(ShardError::OutOfRange(bad.into()))
            );
        }
        for bad in ["2", "a/4", "2/b", "-1/4", ""] {
            assert_eq!(ShardSpec::parse(bad), Err(ShardError::Syntax(bad.into())));
        }
    }

    #[test]
    fn start_times_are_rfc3339_or_unix_seconds() {
        let epoch = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(parse_start_at("1700000000"), Ok(epoch(1_700_000_000)));
        assert_eq!(
            parse_start_at("2023-11-14T22:13:20Z"),
            Ok(epoch(1_700_000_000))
        );
        assert!(parse_start_at("tomorrow").is_err());
        assert!(parse_start_at("-5").is_err());
        let now = epoch(1_000_000);
        assert_eq!(wait_for(epoch(999_000), now), Ok(Duration::ZERO));
        assert_eq!(wait_for(epoch(1_000_010), now), Ok(Duration::from_secs(10)));
        let error = wait_for(epoch(1_000_000 + 25 * 3600), now).unwrap_err();
        assert!(
            error.ends_with("1day 1h ahead, more than the limit of 24h"),
            "{error}"
        );
    }
}
