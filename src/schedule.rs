//! Cron schedules, as stored: a schedule turns a file into a fresh batch at every
//! firing (the scheduler module fires them).
//!
//! Expressions are standard five-field cron with an optional leading seconds field,
//! in a time zone per schedule (parsed by `croner`, zones by `chrono-tz`). Each firing
//! creates one batch with `schedule` = the name and `scheduled_for` = the firing time;
//! the unique constraint on those two makes a double firing impossible however many
//! schedulers run. A scheduler that was down fires only the most recent missed firing.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};

use crate::input::SubmitOptions;

/// A stored schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The schedule's name (its batches are `<name>@<firing time>`).
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The time zone the expression is read in.
    pub timezone: String,
    /// A local path or `s3://bucket/key`, read at each firing.
    pub file: String,
    /// The queue its batches go to.
    pub queue: String,
    /// How the file becomes jobs.
    pub options: SubmitOptions,
    /// The latest firing handled.
    pub last_fired_for: Option<DateTime<Utc>>,
    /// When it was added: it never fires for an earlier time.
    pub created_at: DateTime<Utc>,
}

/// Parses a cron expression: five fields, or six with a leading seconds field.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 && fields != 6 {
        return Err(format!(
            "`{expr}` has {fields} fields; use five (minute hour day month weekday) \
             or six with a leading seconds field"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("`{expr}`: {e}"))
}

/// Parses a time zone name (`UTC`, `Europe/Paris`).
pub fn parse_timezone(tz: &str) -> Result<Tz, String> {
    Tz::from_str(tz).map_err(|_| format!("`{tz}` is not a time zone (e.g. UTC, Europe/Paris)"))
}

impl Schedule {
    fn cron_and_tz(&self) -> Result<(Cron, Tz), String> {
        Ok((parse_cron(&self.cron)?, parse_timezone(&self.timezone)?))
    }

    /// The next firing after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, tz) = self.cron_and_tz().ok()?;
        cron.find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| whole_seconds(t.with_timezone(&Utc)))
    }

    /// The firing due at `now`, if one is: the most recent firing at or before `now`
    /// that is later than the last one fired (and not before the schedule existed).
    /// Also says how many earlier firings were missed and are skipped.
    pub fn due(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, u32)> {
        let (cron, tz) = self.cron_and_tz().ok()?;
        let latest = whole_seconds(
            cron.find_previous_occurrence(&now.with_timezone(&tz), true)
                .ok()?
                .with_timezone(&Utc),
        );
        let since = self.last_fired_for.unwrap_or(self.created_at);
        if latest <= since || (self.last_fired_for.is_none() && latest < self.created_at) {
            return None;
        }
        let mut skipped = 0;
        let mut t = since;
        while let Some(next) = self.next_after(t) {
            if next >= latest || skipped >= 10_000 {
                break;
            }
            skipped += 1;
            t = next;
        }
        Some((latest, skipped))
    }
}

/// Firing times are whole seconds: the key of a firing must not depend on when,
/// within that second, a scheduler looked.
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Timelike;
    t.with_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str, created: &str, last: Option<&str>) -> Schedule {
        Schedule {
            name: "n".into(),
            cron: cron.into(),
            timezone: tz.into(),
            file: "f".into(),
            queue: "q".into(),
            options: SubmitOptions::default(),
            last_fired_for: last.map(|l| l.parse().unwrap()),
            created_at: created.parse().unwrap(),
        }
    }

    #[test]
    fn five_and_six_fields_parse_others_are_refused() {
        assert!(parse_cron("0 2 * * *").is_ok());
        assert!(parse_cron("*/10 0 2 * * *").is_ok());
        assert!(parse_cron("0 2 * *").unwrap_err().contains("4 fields"));
        assert!(parse_cron("0 25 * * *").is_err());
        assert!(parse_timezone("Europe/Paris").is_ok());
        assert!(parse_timezone("Mars/Olympus").is_err());
    }

    #[test]
    fn a_scheduler_that_was_down_fires_only_the_latest_missed_time() {
        let s = schedule(
            "0 * * * *",
            "UTC",
            "2026-11-01T00:00:00Z",
            Some("2026-11-28T10:00:00Z"),
        );
        let now: DateTime<Utc> = "2026-11-28T13:20:00Z".parse().unwrap();
        let (at, skipped) = s.due(now).unwrap();
        assert_eq!(at, "2026-11-28T13:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(skipped, 2, "11:00 and 12:00 were missed");
        let fired = Schedule {
            last_fired_for: Some(at),
            ..s
        };
        assert!(fired.due(now).is_none(), "nothing more is due");
    }

    #[test]
    fn time_zones_move_the_firing() {
        let s = schedule("0 2 * * *", "Europe/Paris", "2026-11-27T00:00:00Z", None);
        let now: DateTime<Utc> = "2026-11-28T03:00:00Z".parse().unwrap();
        // 02:00 in Paris is 01:00 UTC in November.
        assert_eq!(
            s.due(now).unwrap().0,
            "2026-11-28T01:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let fresh = schedule("0 2 * * *", "UTC", "2026-11-28T02:30:00Z", None);
        assert!(
            fresh.due("2026-11-28T02:45:00Z".parse().unwrap()).is_none(),
            "not before it existed"
        );
    }
}
