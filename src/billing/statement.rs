//! Statements from billing events, as plain values: which pair was held by which app in a month,
//! for how many seconds, and what that costs. Money is integer cents throughout.
//!
//! **Rounding rule**: each line is `unit_price_cents × seconds_held ÷ seconds_in_month`, rounded
//! half up to a whole cent, once per line; a statement's total is the sum of its lines.

use serde::Serialize;

pub const PROVISIONED: &str = "edge_pair.provisioned";
pub const RELEASED: &str = "edge_pair.released";

/// A calendar month in UTC, `[start, end)` in unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Month {
    pub year: i32,
    pub month: u8,
    pub start: i64,
    pub end: i64,
}

impl Month {
    /// Parses `YYYY-MM`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (y, m) = raw.trim().split_once('-')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        Self::new(y.parse().ok()?, m.parse().ok()?)
    }

    pub fn new(year: i32, month: u8) -> Option<Self> {
        let first =
            time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, 1).ok()?;
        let next = if month == 12 {
            time::Date::from_calendar_date(year + 1, time::Month::January, 1).ok()?
        } else {
            time::Date::from_calendar_date(year, time::Month::try_from(month + 1).ok()?, 1).ok()?
        };
        let ts = |d: time::Date| d.midnight().assume_utc().unix_timestamp();
        Some(Self {
            year,
            month,
            start: ts(first),
            end: ts(next),
        })
    }

    pub fn containing(unix: i64) -> Self {
        let date = time::OffsetDateTime::from_unix_timestamp(unix)
            .expect("a valid time")
            .date();
        Self::new(date.year(), date.month() as u8).expect("a valid month")
    }

    pub fn previous(self) -> Self {
        if self.month == 1 {
            Self::new(self.year - 1, 12)
        } else {
            Self::new(self.year, self.month - 1)
        }
        .expect("a valid month")
    }

    pub fn seconds(self) -> i64 {
        self.end - self.start
    }

    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }
}

/// One billing event, as statements read it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: i64,
    pub kind: String,
    pub customer_id: i64,
    pub customer: String,
    pub app_id: i64,
    pub app: String,
    pub pair_id: i64,
    pub pair: String,
    pub occurred_at: i64,
    pub unit_price_cents: i64,
    pub currency: String,
}

/// One line of a statement: one holding of a pair by an app within the month.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Line {
    pub customer: String,
    pub app: String,
    pub pair: String,
    pub from: i64,
    pub to: i64,
    /// Still held at the end of the period shown (month end, or now for the current month).
    pub open: bool,
    pub seconds: i64,
    pub unit_price_cents: i64,
    pub currency: String,
    pub amount_cents: i64,
}

/// `price × seconds ÷ month_seconds`, rounded half up, in integers only.
pub fn prorate(unit_price_cents: i64, seconds: i64, month_seconds: i64) -> i64 {
    let num = i128::from(unit_price_cents) * i128::from(seconds);
    let den = i128::from(month_seconds);
    ((2 * num + den) / (2 * den)) as i64
}

/// Builds a month's lines from events fed in (app, pair, time) order, one holding at a time:
/// only the holding in progress is kept, so memory does not grow with the number of events.
/// Holdings still open end at `min(now, month end)`.
pub struct Statement {
    month: Month,
    now: i64,
    open: Option<Event>,
}

impl Statement {
    pub fn new(month: Month, now: i64) -> Self {
        Self {
            month,
            now,
            open: None,
        }
    }

    fn line(&self, start: &Event, end: Option<i64>) -> Option<Line> {
        let period_end = self.month.end.min(self.now.max(self.month.start));
        let to = end.unwrap_or(period_end).min(period_end);
        let from = start.occurred_at.max(self.month.start);
        if to <= from {
            return None;
        }
        let seconds = to - from;
        Some(Line {
            customer: start.customer.clone(),
            app: start.app.clone(),
            pair: start.pair.clone(),
            from,
            to,
            open: end.is_none_or(|e| e > period_end),
            seconds,
            unit_price_cents: start.unit_price_cents,
            currency: start.currency.clone(),
            amount_cents: prorate(start.unit_price_cents, seconds, self.month.seconds()),
        })
    }

    /// Feeds the next event; returns the line it completes, if any.
    pub fn push(&mut self, event: Event) -> Option<Line> {
        let open = self.open.take();
        match open {
            // Another app or pair: the holding in progress was never released.
            Some(open) if open.app_id != event.app_id || open.pair_id != event.pair_id => {
                let done = self.line(&open, None);
                if event.kind == PROVISIONED {
                    self.open = Some(event);
                }
                done
            }
            // Released (or provisioned again without a release): the holding ends here.
            Some(open) => {
                let done = self.line(&open, Some(event.occurred_at));
                if event.kind == PROVISIONED {
                    self.open = Some(event);
                }
                done
            }
            None => {
                if event.kind == PROVISIONED {
                    self.open = Some(event);
                }
                None
            }
        }
    }

    /// The last holding, if it is still held.
    pub fn finish(&mut self) -> Option<Line> {
        let open = self.open.take()?;
        self.line(&open, None)
    }
}

/// All lines of `events` (sorted by app, pair, time) for `month`.
pub fn lines(events: impl IntoIterator<Item = Event>, month: Month, now: i64) -> Vec<Line> {
    let mut statement = Statement::new(month, now);
    let mut out: Vec<Line> = events
        .into_iter()
        .filter_map(|e| statement.push(e))
        .collect();
    out.extend(statement.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, at: i64, app: i64) -> Event {
        Event {
            id: at,
            kind: kind.into(),
            customer_id: 1,
            customer: "ann@example.com".into(),
            app_id: app,
            app: format!("app-{app}"),
            pair_id: app,
            pair: format!("pair-{app}"),
            occurred_at: at,
            unit_price_cents: 2000,
            currency: "USD".into(),
        }
    }

    #[test]
    fn months_parse_and_know_their_length() {
        let feb = Month::parse("2028-02").unwrap();
        assert_eq!(feb.seconds(), 29 * 86_400);
        assert_eq!(
            Month::parse("2026-12").unwrap().end,
            Month::parse("2027-01").unwrap().start
        );
        assert!(Month::parse("2026-13").is_none() && Month::parse("26-01").is_none());
        assert_eq!(Month::containing(feb.start + 5).label(), "2028-02");
    }

    #[test]
    fn rounding_is_half_up_per_line() {
        assert_eq!(prorate(2000, 30 * 86_400, 30 * 86_400), 2000);
        assert_eq!(prorate(2000, 1, 30 * 86_400), 0);
        assert_eq!(prorate(3, 1, 2), 2, "1.5 rounds up");
        assert_eq!(prorate(2000, 15 * 86_400, 30 * 86_400), 1000);
    }

    #[test]
    fn a_holding_across_a_month_boundary_splits_into_each_month() {
        let nov = Month::parse("2026-11").unwrap();
        let dec = Month::parse("2026-12").unwrap();
        let provisioned = nov.end - 10 * 86_400;
        let released = dec.start + 5 * 86_400;
        let events = vec![
            event(PROVISIONED, provisioned, 1),
            event(RELEASED, released, 1),
        ];
        let in_nov = lines(events.clone(), nov, i64::MAX);
        let in_dec = lines(events, dec, i64::MAX);
        assert_eq!(in_nov.len(), 1);
        assert_eq!(in_nov[0].seconds, 10 * 86_400);
        assert_eq!(
            in_nov[0].amount_cents,
            prorate(2000, 10 * 86_400, nov.seconds())
        );
        assert_eq!(in_dec[0].seconds, 5 * 86_400);
        assert!(!in_dec[0].open);
    }

    #[test]
    fn open_holdings_run_to_now_in_the_current_month_and_others_are_separate() {
        let nov = Month::parse("2026-11").unwrap();
        let now = nov.start + 20 * 86_400;
        let events = vec![
            event(PROVISIONED, nov.start - 100, 1),
            event(PROVISIONED, nov.start + 86_400, 2),
            event(RELEASED, nov.start + 2 * 86_400, 2),
            event(PROVISIONED, nov.start + 3 * 86_400, 2),
        ];
        let found = lines(events, nov, now);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].seconds, 20 * 86_400);
        assert!(found[0].open);
        assert_eq!(found[1].seconds, 86_400);
        assert_eq!(found[2].seconds, 17 * 86_400);
    }
}
