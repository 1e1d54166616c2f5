//! The money part of a status: `status.cost` and the `Expiring` condition, from the status the
//! observation gave, the key's catalogue and bills (when read), and the time.
//!
//! Pure: the same inputs give the same status, so nothing is written when nothing changed.
//! What the key has not read yet (its catalogue, its bills) keeps the figures the stored status
//! shows: a restart, or a failing billing call, changes no figure.

use std::time::Duration;

use jiff::Timestamp;

use super::{Amount, BillTotals, Catalogue, Expiry, billed_through, expiry, hourly_cost};
use crate::conditions::make_condition;
use crate::crd::{Cost, PpioInstanceStatus};
use crate::vocabulary::{condition, reason, state, status as cstatus};

/// What the operator knows of money for one PpioInstance's key.
#[derive(Debug, Clone, Copy, Default)]
pub struct MoneyView<'a> {
    /// The currency of every amount (`--currency`, else the host's); `None`: unknown.
    pub currency: Option<&'a str>,
    /// The key's catalogue; `None`: not read (yet).
    pub catalogue: Option<&'a Catalogue>,
    /// The key's bills this month and when they were read; `None`: not read (yet).
    pub bills: Option<(&'a BillTotals, Timestamp)>,
    /// `PrepaidEnding` is said this long before a prepaid term without auto-renew ends.
    pub horizon: Duration,
}

/// The default horizon of `PrepaidEnding`.
pub const DEFAULT_PREPAID_HORIZON: Duration = Duration::from_secs(72 * 3600);

/// Sets `status.cost` and the `Expiring` condition of `status` (the status an observation gave;
/// `previous` is the stored one). Returns when the `Expiring` condition changes by itself (a
/// prepaid end entering the horizon), so the status is computed again then.
pub fn apply_money(
    status: &mut PpioInstanceStatus,
    previous: Option<&PpioInstanceStatus>,
    view: &MoneyView<'_>,
    now: Timestamp,
) -> Option<Timestamp> {
    let gone = status.state.as_deref() == Some(state::NOT_FOUND);
    let (expiring, next) = if gone {
        (Expiry::No, None)
    } else {
        expiry_of(status, now, view.horizon)
    };
    set_expiring(status, previous, &expiring, gone, now);
    // No money figure for an instance that is gone.
    status.cost = if gone {
        None
    } else {
        cost_of(status, previous, view)
    };
    next
}

/// The `Expiring` answer of what the status shows.
fn expiry_of(
    status: &PpioInstanceStatus,
    now: Timestamp,
    horizon: Duration,
) -> (Expiry, Option<Timestamp>) {
    let time = |t: Option<&String>| t.and_then(|t| t.parse::<Timestamp>().ok());
    let spot = status.pricing.as_ref().and_then(|p| p.spot.as_ref());
    let spot_status = spot.and_then(|s| s.status.as_deref());
    let reclaim = time(spot.and_then(|s| s.reclaim_time.as_ref()));
    // Only a spot instance's notice counts (another mode carries no reclaim).
    let is_spot = status
        .billing
        .as_ref()
        .and_then(|b| b.mode.as_deref())
        .is_none_or(|m| m == "spot");
    let prepaid = status.billing.as_ref().and_then(|b| b.prepaid.as_ref());
    let end = time(prepaid.and_then(|p| p.end_time.as_ref()));
    let renews = prepaid
        .and_then(|p| p.auto_renew.as_ref())
        .and_then(|a| a.enabled);
    expiry(
        spot_status.filter(|_| is_spot),
        reclaim.filter(|_| is_spot),
        end,
        renews,
        now,
        horizon,
    )
}

fn set_expiring(
    status: &mut PpioInstanceStatus,
    previous: Option<&PpioInstanceStatus>,
    expiring: &Expiry,
    gone: bool,
    now: Timestamp,
) {
    let (st, why, message) = match expiring {
        Expiry::SpotReclaim { at: Some(at) } => (
            cstatus::TRUE,
            reason::SPOT_RECLAIM_SCHEDULED,
            format!("PPIO announced that it reclaims this spot instance at {at}."),
        ),
        Expiry::SpotReclaim { at: None } => (
            cstatus::TRUE,
            reason::SPOT_RECLAIM_SCHEDULED,
            "PPIO announced that it reclaims this spot instance.".to_string(),
        ),
        Expiry::PrepaidEnding { at } => (
            cstatus::TRUE,
            reason::PREPAID_ENDING,
            format!("The prepaid term ends at {at} and auto-renew is off."),
        ),
        Expiry::No if gone => (
            cstatus::FALSE,
            reason::NOT_EXPIRING,
            "The instance is gone.".to_string(),
        ),
        Expiry::No => (
            cstatus::FALSE,
            reason::NOT_EXPIRING,
            "No spot reclaim is announced and no prepaid term without auto-renew ends soon."
                .to_string(),
        ),
    };
    let old = previous
        .and_then(|p| p.condition(condition::EXPIRING))
        .or_else(|| status.condition(condition::EXPIRING))
        .cloned();
    let c = make_condition(
        old.as_ref(),
        condition::EXPIRING,
        st,
        why,
        &message,
        status.observed_generation,
        Timestamp::from_second(now.as_second()).unwrap_or(now),
    );
    status.conditions.retain(|c| c.type_ != condition::EXPIRING);
    status.conditions.push(c);
}

/// `status.cost`: what the key's catalogue and bills say; the stored figures for what the key
/// has not read.
fn cost_of(
    status: &PpioInstanceStatus,
    previous: Option<&PpioInstanceStatus>,
    view: &MoneyView<'_>,
) -> Option<Cost> {
    let stored = previous
        .filter(|p| p.instance_id == status.instance_id)
        .and_then(|p| p.cost.clone())
        .unwrap_or_default();
    let (hourly, hourly_basis) = match view.catalogue {
        None => (stored.hourly, stored.hourly_basis),
        Some(catalogue) => match status.pricing.as_ref().and_then(|p| p.instance_price) {
            // Never fetched in full: nothing to calibrate yet.
            None => (None, None),
            Some(price) => {
                let product = status
                    .product_id
                    .as_deref()
                    .and_then(|id| catalogue.products.get(id));
                let (hourly, basis) = hourly_cost(
                    price,
                    status.billing.as_ref().and_then(|b| b.mode.as_deref()),
                    status.resources.as_ref().and_then(|r| r.gpu_num),
                    product,
                );
                (
                    hourly.map(|a: Amount| a.to_string()),
                    Some(basis.as_str().to_string()),
                )
            }
        },
    };
    // Bills that do not answer for the instance (it came after they were read) keep what
    // the stored status shows.
    let spend = match (view.bills, status.instance_id.as_deref()) {
        (Some((totals, read_at)), Some(id)) => totals.spend_of(id).map(|s| (s, read_at)),
        _ => None,
    };
    let (month_to_date, billed) = match spend {
        Some((spend, read_at)) => (
            Some(spend.amount().to_string()),
            billed_through(spend, read_at).map(|t| t.to_string()),
        ),
        None => (stored.month_to_date, stored.billed_through),
    };
    let figures = Cost {
        currency: None,
        hourly,
        hourly_basis,
        month_to_date,
        billed_through: billed,
    };
    // A currency alone says nothing.
    (figures != Cost::default()).then(|| Cost {
        currency: view.currency.map(str::to_string),
        ..figures
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Billing, Pricing};
    use crate::money::{ProductPrice, Spend};

    fn running(price: i64) -> PpioInstanceStatus {
        PpioInstanceStatus {
            instance_id: Some("i-1".into()),
            state: Some("running".into()),
            product_id: Some("p1".into()),
            billing: Some(Billing {
                mode: Some("postpaid".into()),
                prepaid: None,
            }),
            pricing: Some(Pricing {
                instance_price: Some(price),
                ..Pricing::default()
            }),
            ..PpioInstanceStatus::default()
        }
    }

    fn now() -> Timestamp {
        "2026-12-05T11:23:00Z".parse().unwrap()
    }

    #[test]
    fn figures_not_read_yet_keep_what_the_status_shows() {
        let mut catalogue = Catalogue::default();
        catalogue.products.insert(
            "p1".into(),
            ProductPrice {
                precision: 2,
                postpaid: Some(100),
                spot: None,
            },
        );
        let mut bills = BillTotals::default();
        bills.by_owner.insert(
            "i-1".into(),
            Spend {
                paid: 12_345,
                through: Some(now().as_second()),
            },
        );
        let read = MoneyView {
            currency: Some("CNY"),
            catalogue: Some(&catalogue),
            bills: Some((&bills, now())),
            horizon: DEFAULT_PREPAID_HORIZON,
        };
        let mut first = running(100);
        apply_money(&mut first, None, &read, now());
        let cost = first.cost.clone().expect("cost");
        assert_eq!(cost.hourly.as_deref(), Some("1.00"));
        assert_eq!(cost.month_to_date.as_deref(), Some("1.2345"));
        assert_eq!(cost.billed_through.as_deref(), Some("2026-12-05T11:00:00Z"));

        // After a restart nothing is read yet: the same figures, so no write.
        let unread = MoneyView {
            currency: Some("CNY"),
            ..MoneyView::default()
        };
        let mut again = running(100);
        apply_money(&mut again, Some(&first), &unread, now());
        assert_eq!(again.cost, first.cost);
        assert_eq!(again.conditions, first.conditions);

        // Gone: no money figure at all.
        let mut gone = running(100);
        gone.state = Some("NotFound".into());
        apply_money(&mut gone, Some(&first), &read, now());
        assert_eq!(gone.cost, None);
        assert_eq!(
            gone.condition(condition::EXPIRING)
                .map(|c| c.status.as_str()),
            Some("False")
        );

        // A currency alone is no figure.
        let mut bare = running(100);
        apply_money(&mut bare, None, &unread, now());
        assert_eq!(bare.cost, None);
    }
}
