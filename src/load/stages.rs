//! `--stages 0:10s,200:30s,200:1m,0:10s`: the number of users over time,
//! as k6 has it. From 0 users, each stage moves linearly to its TARGET
//! over its DURATION (`200:0s` jumps); the run lasts as long as the stages
//! together. User `i` (from 0) runs conversations while the target is
//! more than `i`; one whose turn ends mid-conversation finishes it, then
//! waits for the target to come back up, or for the end.

use std::time::Duration;

use thiserror::Error;

use super::shard::Shard;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stages(Vec<Stage>);

#[derive(Debug, Clone, Copy, PartialEq)]
struct Stage {
    target: u64,
    duration: Duration,
}

#[derive(Debug, Error, PartialEq)]
pub(crate) enum StagesError {
    #[error("`{0}` is not TARGET:DURATION (e.g. 200:30s)")]
    Syntax(String),
    #[error("`{stage}`: {problem}")]
    Duration { stage: String, problem: String },
    #[error("`{0}`: a target is from 0 to {max} users", max = super::MAX_USERS)]
    Target(String),
    #[error("the stages last 0s in all: give at least one a duration")]
    Empty,
    #[error("the stages last more than the limit of 1 year (1y) in all")]
    TooLong,
    #[error("no stage has any user: give at least one a target above 0")]
    NoUsers,
}

impl Stages {
    pub(crate) fn parse(text: &str) -> Result<Stages, StagesError> {
        let mut stages = Vec::new();
        for stage in text.split(',') {
            let stage = stage.trim();
            let (target, duration) = stage
                .split_once(':')
                .ok_or_else(|| StagesError::Syntax(stage.to_string()))?;
            let target: u64 = target
                .trim()
                .parse()
                .map_err(|_| StagesError::Syntax(stage.to_string()))?;
            if target > super::MAX_USERS {
                return Err(StagesError::Target(stage.to_string()));
            }
            let duration = crate::cli::parse_retry(duration.trim()).map_err(|problem| {
                StagesError::Duration {
                    stage: stage.to_string(),
                    problem,
                }
            })?;
            stages.push(Stage { target, duration });
        }
        let total = stages
            .iter()
            .try_fold(Duration::ZERO, |sum, s| sum.checked_add(s.duration));
        if total.is_none_or(|total| total > crate::cli::MAX_DURATION) {
            return Err(StagesError::TooLong);
        }
        let stages = Stages(stages);
        if stages.total().is_zero() {
            return Err(StagesError::Empty);
        }
        if stages.users() == 0 {
            return Err(StagesError::NoUsers);
        }
        Ok(stages)
    }

    /// How long the run lasts: every stage, one after another.
    pub(crate) fn total(&self) -> Duration {
        self.0.iter().map(|s| s.duration).sum()
    }

    /// The most users at any time: the threads to start.
    pub(crate) fn users(&self) -> usize {
        self.0.iter().map(|s| s.target).max().unwrap_or(0) as usize
    }

    /// This shard's share of every stage's target.
    pub(crate) fn shard(&self, shard: &Shard) -> Stages {
        Stages(
            self.0
                .iter()
                .map(|s| Stage {
                    target: shard.share(s.target),
                    duration: s.duration,
                })
                .collect(),
        )
    }

    /// The earliest time from `now` at which user `user` (from 0) may run,
    /// `now` itself when it may already; `None` when it never will again.
    pub(crate) fn next_turn(&self, user: usize, now: Duration) -> Option<Duration> {
        let needed = (user + 1) as f64;
        let (mut start, mut from) = (Duration::ZERO, 0.0);
        for stage in &self.0 {
            let end = start + stage.duration;
            let to = stage.target as f64;
            if now < end {
                let at = start.max(now);
                let target = from + (to - from) * fraction(at - start, stage.duration);
                if target >= needed {
                    return Some(at);
                }
                if to >= needed {
                    // Ramping up: the moment the line crosses `needed`.
                    let when = start + stage.duration.mul_f64((needed - from) / (to - from));
                    return Some(when.max(at));
                }
            }
            start = end;
            from = to;
        }
        None
    }
}

fn fraction(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        1.0
    } else {
        part.as_secs_f64() / whole.as_secs_f64()
    }
}

/// For clap.
pub(crate) fn parse_arg(text: &str) -> Result<Stages, String> {
    Stages::parse(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn stages_parse_into_a_length_and_a_peak() {
        let stages = Stages::parse("0:10s,200:30s,200:1m,0:10s").unwrap();
        assert_eq!(stages.total(), s(110.0));
        assert_eq!(stages.users(), 200);
    }

    #[test]
    fn bad_stages_say_what_is_wrong() {
        assert_eq!(Stages::parse("200"), Err(StagesError::Syntax("200".into())));
        assert_eq!(
            Stages::parse("x:1s"),
            Err(StagesError::Syntax("x:1s".into()))
        );
        assert_eq!(Stages::parse("5:0s"), Err(StagesError::Empty));
        assert_eq!(Stages::parse("5:1y,5:1s"), Err(StagesError::TooLong));
        assert_eq!(Stages::parse("0:5s"), Err(StagesError::NoUsers));
        assert_eq!(
            Stages::parse("10001:1s"),
            Err(StagesError::Target("10001:1s".into()))
        );
        assert!(matches!(
            Stages::parse("5:soon"),
            Err(StagesError::Duration { .. })
        ));
    }

    #[test]
    fn users_join_as_the_ramp_reaches_them() {
        // 0 to 10 users over 10 s: user i starts at i + 1 seconds.
        let stages = Stages::parse("10:10s,10:5s").unwrap();
        assert_eq!(stages.next_turn(0, s(0.0)), Some(s(1.0)));
        assert_eq!(stages.next_turn(4, s(0.0)), Some(s(5.0)));
        assert_eq!(stages.next_turn(4, s(7.0)), Some(s(7.0)));
        assert_eq!(stages.next_turn(9, s(12.0)), Some(s(12.0)));
        // After the last stage: never again.
        assert_eq!(stages.next_turn(0, s(15.0)), None);
    }

    #[test]
    fn users_leave_as_the_ramp_goes_down_and_come_back() {
        let stages = Stages::parse("4:0s,4:2s,1:1s,1:1s,4:0s,4:1s").unwrap();
        assert_eq!(stages.next_turn(3, s(0.0)), Some(s(0.0)));
        assert_eq!(stages.next_turn(0, s(3.5)), Some(s(3.5)));
        // User 3 is off from the ramp down until the jump at 4 s.
        assert_eq!(stages.next_turn(3, s(2.5)), Some(s(4.0)));
        assert_eq!(stages.next_turn(3, s(4.5)), Some(s(4.5)));
        // A user above every target never runs.
        assert_eq!(stages.next_turn(4, s(0.0)), None);
    }

    #[test]
    fn shards_share_each_stage() {
        let stages = Stages::parse("5:1s,9:1s").unwrap();
        let first = stages.shard(&Shard { index: 1, count: 2 });
        let second = stages.shard(&Shard { index: 2, count: 2 });
        assert_eq!((first.users(), second.users()), (5, 4));
        assert_eq!(first.0[0].target + second.0[0].target, 5);
    }
}
