//! Money, exactly: amounts as integers with a decimal scale (never floats), the calibration of
//! an instance's price against the products catalogue, bill totals, the currency, and when an
//! instance is about to be reclaimed or to reach the end of its prepaid term.
//!
//! What PPIO documents and what it does not (see the README's "Cost" section):
//! * the catalogue gives prices as integer / 10^`precision` per hour;
//! * bills give amounts in 1/10000 of the currency, settled hourly;
//! * the unit of an instance's own `pricing.instance_price` is not documented: it is calibrated
//!   here against the catalogue, and left unknown when nothing matches;
//! * no payload names the currency.

pub mod status;

use std::collections::HashMap;
use std::fmt;

use jiff::Timestamp;

/// An exact amount: `units` / 10^`scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Amount {
    pub units: i128,
    pub scale: u32,
}

/// The scale of bill amounts and balances: 1/10000 of the currency.
pub const BILL_SCALE: u32 = 4;

/// The largest decimal scale taken from a payload (a larger `precision` is not a price).
pub const MAX_SCALE: u32 = 18;

impl Amount {
    pub fn new(units: i128, scale: u32) -> Amount {
        Amount { units, scale }
    }

    /// The same amount at `scale` (at least its own): exact, no rounding.
    pub fn at_scale(self, scale: u32) -> Amount {
        let scale = scale.max(self.scale);
        let factor = 10i128.saturating_pow(scale - self.scale);
        Amount {
            units: self.units.saturating_mul(factor),
            scale,
        }
    }

    /// The exact sum (at the larger scale of the two).
    pub fn plus(self, other: Amount) -> Amount {
        let scale = self.scale.max(other.scale);
        Amount {
            units: self
                .at_scale(scale)
                .units
                .saturating_add(other.at_scale(scale).units),
            scale,
        }
    }

    /// The exact difference (at the larger scale of the two).
    pub fn minus(self, other: Amount) -> Amount {
        self.plus(Amount::new(other.units.saturating_neg(), other.scale))
    }

    pub fn is_zero(self) -> bool {
        self.units == 0
    }

    /// For a metric only (Prometheus samples are floats): the money path never uses it.
    pub fn approx_f64(self) -> f64 {
        self.units as f64 / 10f64.powi(self.scale as i32)
    }

    /// Parses a plain decimal string ("12.600", "-3", "0.0001"), as [`Amount`] writes it.
    pub fn parse(text: &str) -> Option<Amount> {
        let (neg, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || frac.len() > 30 {
            return None;
        }
        let units: i128 = format!("{whole}{frac}").parse().ok()?;
        Some(Amount {
            units: if neg { -units } else { units },
            scale: frac.len() as u32,
        })
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.units < 0 { "-" } else { "" };
        let digits = self.units.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (whole, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{whole}.{frac}")
    }
}

/// The hourly prices of one product, as the catalogue states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductPrice {
    /// Prices are integer / 10^precision per hour.
    pub precision: u32,
    /// `pricing.postpaid.final_price`, when stated.
    pub postpaid: Option<i64>,
    /// `pricing.spot.final_price`, when stated.
    pub spot: Option<i64>,
}

/// A key's products catalogue, by product id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalogue {
    pub products: HashMap<String, ProductPrice>,
}

/// How `pricing.instancePrice` matched the catalogue (`status.cost.hourlyBasis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// It equals the product's final price: the price of the whole instance.
    PerInstance,
    /// It equals the product's final price times the instance's cards.
    PerCard,
    /// Nothing matched (or the product is not in the catalogue): its unit is not known.
    Unknown,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::PerInstance => "perInstance",
            Basis::PerCard => "perCard",
            Basis::Unknown => "Unknown",
        }
    }
}

/// The instance's hourly cost, when its price can be calibrated: `instance_price` against the
/// catalogue's final price for its billing mode (the spot price for `spot`, else the postpaid
/// price), for the whole instance or per card. The hourly cost is then `instance_price` at the
/// catalogue's precision; with no match it is unknown, never guessed.
pub fn hourly_cost(
    instance_price: i64,
    mode: Option<&str>,
    gpu_num: Option<i64>,
    product: Option<&ProductPrice>,
) -> (Option<Amount>, Basis) {
    let Some(product) = product.filter(|p| p.precision <= MAX_SCALE) else {
        return (None, Basis::Unknown);
    };
    let final_price = if mode == Some("spot") {
        product.spot
    } else {
        product.postpaid
    };
    let Some(final_price) = final_price.filter(|p| *p > 0) else {
        return (None, Basis::Unknown);
    };
    let cost = Some(Amount::new(i128::from(instance_price), product.precision));
    if instance_price == final_price {
        return (cost, Basis::PerInstance);
    }
    match gpu_num.filter(|n| *n > 1) {
        Some(cards) if Some(instance_price) == final_price.checked_mul(cards) => {
            (cost, Basis::PerCard)
        }
        _ => (None, Basis::Unknown),
    }
}

/// What one instance was billed in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spend {
    /// The sum of the bills' `payAmount` (after vouchers), in 1/10000 of the currency.
    pub paid: i128,
    /// The end (exclusive, Unix seconds) of the latest settled period among its bills.
    pub through: Option<i64>,
}

impl Spend {
    pub fn add(&mut self, other: Spend) {
        self.paid = self.paid.saturating_add(other.paid);
        self.through = self.through.max(other.through);
    }

    pub fn amount(self) -> Amount {
        Amount::new(self.paid, BILL_SCALE)
    }
}

/// Bill totals by instance id (`ownerID`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BillTotals {
    pub by_owner: HashMap<String, Spend>,
    /// The instance ids the totals answer for; `None`: every instance of the account (an
    /// instance without a bill spent nothing).
    pub covers: Option<std::collections::HashSet<String>>,
}

impl BillTotals {
    pub fn merge(&mut self, other: BillTotals) {
        for (owner, spend) in other.by_owner {
            self.by_owner.entry(owner).or_default().add(spend);
        }
    }

    /// An instance's spend: `None` when the totals do not answer for it (it was not asked
    /// for, or came after they were read).
    pub fn spend_of(&self, id: &str) -> Option<Spend> {
        self.answers_for(id)
            .then(|| self.by_owner.get(id).copied().unwrap_or_default())
    }

    /// Whether the totals answer for instance `id`.
    pub fn answers_for(&self, id: &str) -> bool {
        self.covers.as_ref().is_none_or(|c| c.contains(id))
    }

    /// Keeps the totals of `ids` alone, which they then answer for (a key keeps its own
    /// instances' bills, not its whole account's).
    pub fn keep_only<'a>(&mut self, ids: impl IntoIterator<Item = &'a String>) {
        let ids: std::collections::HashSet<String> = ids.into_iter().cloned().collect();
        self.by_owner.retain(|owner, _| ids.contains(owner));
        self.by_owner.shrink_to_fit();
        self.covers = Some(ids);
    }
}

/// A window of Unix seconds, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// The current calendar month (UTC) up to `now`.
    pub fn month_to(now: Timestamp) -> Window {
        Window {
            start: month_start(now).as_second(),
            end: now.as_second(),
        }
    }

    /// Whether `t` lies in the window.
    pub fn holds(self, t: i64) -> bool {
        self.start <= t && t < self.end
    }

    /// The two halves (a bill answer too large for one request is asked for in slices).
    pub fn halves(self) -> Option<(Window, Window)> {
        let mid = self.start + (self.end - self.start) / 2;
        (mid > self.start && mid < self.end).then_some((
            Window {
                start: self.start,
                end: mid,
            },
            Window {
                start: mid,
                end: self.end,
            },
        ))
    }
}

/// The first instant of `now`'s calendar month, UTC.
pub fn month_start(now: Timestamp) -> Timestamp {
    let utc = now.to_zoned(jiff::tz::TimeZone::UTC);
    utc.date()
        .first_of_month()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .unwrap_or(now)
}

/// The end of the last settled hour included in a total: the latest bill's end, and never
/// past the last whole hour before `read_at` (bills settle hourly).
pub fn billed_through(spend: Spend, read_at: Timestamp) -> Option<Timestamp> {
    let hour = read_at.as_second() - read_at.as_second().rem_euclid(3600);
    let through = spend.through?.min(hour);
    Timestamp::from_second(through).ok()
}

/// The currency of a base URL's host: PPIO's hosts bill in CNY, Novita's in USD; any other
/// host (a proxy, the simulator) says nothing.
pub fn currency_for_host(host: &str) -> Option<&'static str> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    if under("ppio.com") || under("ppinfra.com") || under("ppio.cloud") {
        Some("CNY")
    } else if under("novita.ai") {
        Some("USD")
    } else {
        None
    }
}

/// Whether a `--currency` value is an ISO 4217 code (three capital letters).
pub fn valid_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// What the `Expiring` condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// A spot reclaim is announced (at this time, when given).
    SpotReclaim { at: Option<Timestamp> },
    /// A prepaid term without auto-renew ends at this time, within the horizon.
    PrepaidEnding { at: Timestamp },
    /// Neither.
    No,
}

/// The spot states that announce a reclaim (`pricing.spot.spot_status`).
pub const SPOT_RECLAIM_STATES: [&str; 2] = ["notified", "reclaiming"];

/// Whether the instance expires soon, from what its status shows, and when that answer
/// changes by itself (a prepaid end entering the horizon).
pub fn expiry(
    spot_status: Option<&str>,
    spot_reclaim: Option<Timestamp>,
    prepaid_end: Option<Timestamp>,
    auto_renew: Option<bool>,
    now: Timestamp,
    horizon: std::time::Duration,
) -> (Expiry, Option<Timestamp>) {
    if spot_reclaim.is_some() || spot_status.is_some_and(|s| SPOT_RECLAIM_STATES.contains(&s)) {
        return (Expiry::SpotReclaim { at: spot_reclaim }, None);
    }
    let Some(end) = prepaid_end.filter(|_| auto_renew != Some(true)) else {
        return (Expiry::No, None);
    };
    let horizon = jiff::SignedDuration::try_from(horizon).unwrap_or(jiff::SignedDuration::MAX);
    let enters = end.checked_sub(horizon).unwrap_or(Timestamp::MIN);
    if now >= enters {
        (Expiry::PrepaidEnding { at: end }, None)
    } else {
        (Expiry::No, Some(enters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_print_exactly() {
        assert_eq!(Amount::new(1999, 3).to_string(), "1.999");
        assert_eq!(Amount::new(12600, 3).to_string(), "12.600");
        assert_eq!(Amount::new(5, 4).to_string(), "0.0005");
        assert_eq!(Amount::new(-5, 2).to_string(), "-0.05");
        assert_eq!(Amount::new(7, 0).to_string(), "7");
        assert_eq!(Amount::new(421100, 4).to_string(), "42.1100");
        assert_eq!(
            Amount::new(1, 3).plus(Amount::new(2, 1)).to_string(),
            "0.201"
        );
        assert_eq!(Amount::parse("12.600"), Some(Amount::new(12600, 3)));
        assert_eq!(Amount::parse("-0.05"), Some(Amount::new(-5, 2)));
        assert_eq!(Amount::parse("1e3"), None);
        assert_eq!(Amount::parse(".5"), None);
    }

    #[test]
    fn calibration_matches_per_instance_per_card_or_nothing() {
        let p = ProductPrice {
            precision: 3,
            postpaid: Some(12600),
            spot: Some(5000),
        };
        assert_eq!(
            hourly_cost(12600, Some("postpaid"), Some(1), Some(&p)),
            (Some(Amount::new(12600, 3)), Basis::PerInstance)
        );
        assert_eq!(
            hourly_cost(25200, Some("postpaid"), Some(2), Some(&p)),
            (Some(Amount::new(25200, 3)), Basis::PerCard)
        );
        assert_eq!(
            hourly_cost(5000, Some("spot"), Some(1), Some(&p)),
            (Some(Amount::new(5000, 3)), Basis::PerInstance)
        );
        // The postpaid price of a spot instance is not its price.
        assert_eq!(
            hourly_cost(12600, Some("spot"), Some(1), Some(&p)),
            (None, Basis::Unknown)
        );
        assert_eq!(
            hourly_cost(100, Some("postpaid"), Some(1), Some(&p)),
            (None, Basis::Unknown)
        );
        assert_eq!(
            hourly_cost(12600, Some("postpaid"), Some(1), None),
            (None, Basis::Unknown)
        );
    }

    #[test]
    fn the_month_starts_at_midnight_utc_on_the_first() {
        let now: Timestamp = "2026-12-05T11:23:00Z".parse().unwrap();
        assert_eq!(
            month_start(now),
            "2026-12-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        let first: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(month_start(first), first);
        let before: Timestamp = "2026-12-31T23:59:59Z".parse().unwrap();
        assert_eq!(
            month_start(before),
            "2026-12-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn billed_through_stops_at_the_last_whole_hour() {
        let read: Timestamp = "2026-12-05T11:23:00Z".parse().unwrap();
        let day_end = "2026-12-06T00:00:00Z".parse::<Timestamp>().unwrap();
        let spend = Spend {
            paid: 1,
            through: Some(day_end.as_second()),
        };
        assert_eq!(
            billed_through(spend, read),
            Some("2026-12-05T11:00:00Z".parse().unwrap())
        );
        let yesterday = "2026-12-04T00:00:00Z".parse::<Timestamp>().unwrap();
        let spend = Spend {
            paid: 1,
            through: Some(yesterday.as_second()),
        };
        assert_eq!(billed_through(spend, read), Some(yesterday));
        assert_eq!(billed_through(Spend::default(), read), None);
    }

    #[test]
    fn currencies_come_from_known_hosts_only() {
        assert_eq!(currency_for_host("api.ppio.com"), Some("CNY"));
        assert_eq!(currency_for_host("api.novita.ai"), Some("USD"));
        assert_eq!(currency_for_host("notppio.com"), None);
        assert_eq!(currency_for_host("127.0.0.1"), None);
        assert!(valid_currency("EUR"));
        assert!(!valid_currency("eur"));
        assert!(!valid_currency("EURO"));
    }

    #[test]
    fn expiry_from_spot_notices_and_prepaid_ends() {
        let now: Timestamp = "2026-12-05T00:00:00Z".parse().unwrap();
        let h72 = std::time::Duration::from_secs(72 * 3600);
        let reclaim: Timestamp = "2026-12-05T00:10:00Z".parse().unwrap();
        assert_eq!(
            expiry(None, Some(reclaim), None, None, now, h72).0,
            Expiry::SpotReclaim { at: Some(reclaim) }
        );
        assert_eq!(
            expiry(Some("notified"), None, None, None, now, h72).0,
            Expiry::SpotReclaim { at: None }
        );
        let end: Timestamp = "2026-12-07T00:00:00Z".parse().unwrap();
        assert_eq!(
            expiry(None, None, Some(end), Some(false), now, h72).0,
            Expiry::PrepaidEnding { at: end }
        );
        // Auto-renew on: not ending.
        assert_eq!(
            expiry(None, None, Some(end), Some(true), now, h72).0,
            Expiry::No
        );
        // Beyond the horizon: not yet, and when it enters it.
        let later: Timestamp = "2026-12-20T00:00:00Z".parse().unwrap();
        let (e, next) = expiry(None, None, Some(later), None, now, h72);
        assert_eq!(e, Expiry::No);
        assert_eq!(next, Some("2026-12-17T00:00:00Z".parse().unwrap()));
    }
}
