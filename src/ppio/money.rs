//! The read-only money calls as they arrive on the wire: the products catalogue, the two bill
//! lists and the balance, decoded leniently (numbers as numbers or numeric strings, unknown
//! fields ignored) into the exact types of [`crate::money`].
//!
//! Bills are not paginated, so a whole account's month can be megabytes: an answer is folded
//! row by row into per-instance totals as it is decoded, never held as rows or as a JSON tree.

use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::wire::{DecodeError, Int, Text, lenient, starts_an_object, wire_struct};
use crate::money::Window;
use crate::money::{Amount, BILL_SCALE, BillTotals, Catalogue, MAX_SCALE, ProductPrice, Spend};

/// The path of the products catalogue, and its required query.
pub const PRODUCTS_PATH: &str = "/gpus/v2/products";
pub const PRODUCTS_QUERY: [(&str, &str); 2] = [("type", "gpu"), ("category", "instance")];
/// The path of pay-as-you-go bills.
pub const BILLS_PATH: &str = "/openapi/v1/billing/bill/list";
/// The path of prepaid (subscription) bills.
pub const MONTHLY_BILLS_PATH: &str = "/openapi/v1/billing/bill/monthly/list";
/// The path of the balance (served on Novita's host; detected elsewhere).
pub const BALANCE_PATH: &str = "/openapi/v1/billing/balance/detail";

/// Which bill list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BillKind {
    /// `bill/list`: hourly-settled pay-as-you-go bills (postpaid, spot).
    PayAsYouGo,
    /// `bill/monthly/list`: prepaid terms, counted in the month they were charged.
    Prepaid,
}

/// One bill request: a window, and one instance or the whole account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillQuery {
    pub kind: BillKind,
    pub window: Window,
    /// `ownerId`: one instance; `None`: every instance of the account.
    pub owner: Option<String>,
}

impl BillQuery {
    /// The path of the call.
    pub fn path(&self) -> &'static str {
        match self.kind {
            BillKind::PayAsYouGo => BILLS_PATH,
            BillKind::Prepaid => MONTHLY_BILLS_PATH,
        }
    }

    /// The query string pairs. Pay-as-you-go bills are asked per month (one row per instance
    /// and month, the smallest answer); the window bounds both.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = match self.kind {
            BillKind::PayAsYouGo => vec![
                ("cycleType", "Month".to_string()),
                ("productCategory", "gpu".to_string()),
            ],
            BillKind::Prepaid => vec![("category", "gpu".to_string())],
        };
        out.push(("startTime", self.window.start.to_string()));
        // The API's end is inclusive.
        out.push((
            "endTime",
            (self.window.end - 1).max(self.window.start).to_string(),
        ));
        if let Some(owner) = &self.owner {
            out.push(("ownerId", owner.clone()));
        }
        out
    }
}

wire_struct! {
    /// One product of the catalogue (only what calibration needs).
    pub struct Product { id: Text, pricing: ProductPricing }
}
wire_struct! {
    /// A product's `pricing`.
    pub struct ProductPricing { precision: Int, postpaid: PriceBlock, spot: PriceBlock }
}
wire_struct! {
    /// `pricing.postpaid` or `pricing.spot`.
    pub struct PriceBlock { final_price: Int, base_price: Int, unit: Text }
}

#[derive(Deserialize)]
struct ProductsEnvelope {
    #[serde(default, deserialize_with = "lenient")]
    data: Option<Vec<Product>>,
}

/// Decodes `GET /gpus/v2/products`: `{"data": [...]}`. A product of the wrong shape (or with a
/// price stated per anything but the hour) is left out, so its instances' unit stays unknown.
pub fn decode_catalogue(body: &[u8]) -> Result<Catalogue, DecodeError> {
    if !starts_an_object(body) {
        return Err(DecodeError::NotAnObject);
    }
    let envelope: ProductsEnvelope =
        serde_json::from_slice(body).map_err(|_| DecodeError::NotACatalogue)?;
    let items = envelope.data.ok_or(DecodeError::NotACatalogue)?;
    let mut catalogue = Catalogue::default();
    for item in items {
        let (Some(Text(id)), Some(pricing)) = (item.id, item.pricing) else {
            continue;
        };
        let Some(precision) = pricing
            .precision
            .and_then(|Int(p)| u32::try_from(p).ok())
            .filter(|p| *p <= MAX_SCALE)
        else {
            continue;
        };
        let hourly = |block: Option<PriceBlock>| {
            block
                .filter(|b| b.unit.as_ref().is_none_or(|Text(u)| u == "per_hour"))
                .and_then(|b| b.final_price)
                .map(|Int(p)| p)
        };
        catalogue.products.insert(
            id,
            ProductPrice {
                precision,
                postpaid: hourly(pricing.postpaid),
                spot: hourly(pricing.spot),
            },
        );
    }
    Ok(catalogue)
}

/// One bill row: what the totals need. Read from a stream, so a field of the wrong shape
/// fails the whole answer (a total that silently left a bill out would be wrong).
#[derive(Deserialize)]
struct Row {
    #[serde(default, alias = "ownerId", rename = "ownerID")]
    owner: Option<Text>,
    #[serde(default, rename = "startTime")]
    start: Option<Int>,
    #[serde(default, rename = "endTime")]
    end: Option<Int>,
    #[serde(default, rename = "createTime")]
    created: Option<Int>,
    #[serde(default, rename = "payAmount")]
    pay_amount: Option<Int>,
}

/// Folds the rows of a bill answer into totals as they are decoded.
struct Fold<'a> {
    kind: BillKind,
    window: Window,
    totals: &'a mut BillTotals,
    /// A row without an amount (or an owner) makes the whole answer unusable: a total that
    /// silently left a bill out would be wrong, not just late.
    bad: &'a mut bool,
}

impl Fold<'_> {
    fn take(&mut self, row: Row) {
        let (Some(Text(owner)), Some(Int(paid))) = (row.owner, row.pay_amount) else {
            *self.bad = true;
            return;
        };
        // A pay-as-you-go bill counts in the window it starts in; a prepaid one in the month
        // it was charged.
        let when = match self.kind {
            BillKind::PayAsYouGo => row.start,
            BillKind::Prepaid => row.created.or(row.start),
        };
        if !when.is_some_and(|Int(t)| self.window.holds(t)) {
            return;
        }
        let through = match self.kind {
            // The API's end is the last second of the period.
            BillKind::PayAsYouGo => row.end.map(|Int(e)| e.saturating_add(1)),
            BillKind::Prepaid => None,
        };
        self.totals.by_owner.entry(owner).or_default().add(Spend {
            paid: i128::from(paid),
            through,
        });
    }
}

impl<'de> DeserializeSeed<'de> for &mut Fold<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for &mut Fold<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of bills")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(row) = seq.next_element::<Row>()? {
            self.take(row);
        }
        Ok(())
    }
}

/// The envelope `{"bills": [...]}`, with the rows folded as met.
struct Envelope<'a, 'b>(&'a mut Fold<'b>, &'a mut bool);

impl<'de> Visitor<'de> for Envelope<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a bills array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "bills" && !*self.1 {
                map.next_value_seed(&mut *self.0)?;
                *self.1 = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Decodes a bill answer (`{"bills": [...]}`) into totals per instance, for the bills of
/// `kind` that fall in `window`.
pub fn decode_bills(
    body: &[u8],
    kind: BillKind,
    window: Window,
) -> Result<BillTotals, DecodeError> {
    if !starts_an_object(body) {
        return Err(DecodeError::NotAnObject);
    }
    decode_bills_from(body, kind, window)
}

/// [`decode_bills`] from a stream: rows are folded as they are read.
pub fn decode_bills_from(
    body: impl std::io::Read,
    kind: BillKind,
    window: Window,
) -> Result<BillTotals, DecodeError> {
    let mut totals = BillTotals::default();
    let mut bad = false;
    let mut found = false;
    let mut fold = Fold {
        kind,
        window,
        totals: &mut totals,
        bad: &mut bad,
    };
    let mut de = serde_json::Deserializer::from_reader(body);
    de.deserialize_map(Envelope(&mut fold, &mut found))
        .and_then(|()| de.end())
        .map_err(|_| DecodeError::NotBills)?;
    if !found || bad {
        return Err(DecodeError::NotBills);
    }
    Ok(totals)
}

#[derive(Deserialize)]
struct BalanceFields {
    #[serde(default, rename = "availableBalance", deserialize_with = "lenient")]
    available: Option<Int>,
}

#[derive(Deserialize)]
struct BalanceEnvelope {
    #[serde(default, rename = "availableBalance", deserialize_with = "lenient")]
    available: Option<Int>,
    #[serde(default, deserialize_with = "lenient")]
    data: Option<BalanceFields>,
}

/// Decodes the balance: `availableBalance` in 1/10000 of the currency (at the top level, or
/// under `data`).
pub fn decode_balance(body: &[u8]) -> Result<Amount, DecodeError> {
    if !starts_an_object(body) {
        return Err(DecodeError::NotAnObject);
    }
    let b: BalanceEnvelope = serde_json::from_slice(body).map_err(|_| DecodeError::NoBalance)?;
    b.available
        .or_else(|| b.data.and_then(|d| d.available))
        .map(|Int(units)| Amount::new(i128::from(units), BILL_SCALE))
        .ok_or(DecodeError::NoBalance)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONTH: Window = Window {
        start: 1_764_547_200, // 2025-12-01T00:00:00Z
        end: 1_767_225_600,   // 2026-01-01T00:00:00Z
    };

    #[test]
    fn the_catalogue_gives_precision_and_final_prices() {
        let body = br#"{"data": [
            {"id": "p1", "pricing": {"precision": 3,
                "postpaid": {"base_price": 18000, "final_price": "12600", "unit": "per_hour"},
                "spot": {"base_price": 9000, "final_price": 5000, "unit": "per_hour"}}},
            {"id": "p2", "pricing": {"precision": "x"}},
            {"id": "p3", "pricing": {"precision": 2, "postpaid": {"final_price": 7, "unit": "per_month"}}},
            "not a product"
        ]}"#;
        let c = decode_catalogue(body).unwrap();
        assert_eq!(
            c.products.get("p1"),
            Some(&ProductPrice {
                precision: 3,
                postpaid: Some(12600),
                spot: Some(5000)
            })
        );
        assert!(!c.products.contains_key("p2"));
        assert_eq!(c.products.get("p3").and_then(|p| p.postpaid), None);
        assert_eq!(
            decode_catalogue(br#"{"products": []}"#),
            Err(DecodeError::NotACatalogue)
        );
    }

    #[test]
    fn bills_fold_into_totals_per_instance_within_the_window() {
        let body = br#"{"bills": [
            {"ownerID": "a", "startTime": "1764547200", "endTime": "1764633599", "payAmount": "10000", "amount": "12000"},
            {"ownerID": "a", "startTime": "1764633600", "endTime": "1764719999", "payAmount": 2500},
            {"ownerID": "b", "startTime": "1764460800", "endTime": "1764547199", "payAmount": "99990000"},
            {"ownerID": "b", "startTime": "1764547200", "endTime": "1764550799", "payAmount": "1", "extra": {"x": [1]}}
        ], "other": 1}"#;
        let t = decode_bills(body, BillKind::PayAsYouGo, MONTH).unwrap();
        assert_eq!(
            t.by_owner.get("a"),
            Some(&Spend {
                paid: 12500,
                through: Some(1_764_720_000)
            })
        );
        // The row of the month before is not this month's.
        assert_eq!(t.by_owner.get("b").map(|s| s.paid), Some(1));
    }

    #[test]
    fn prepaid_bills_count_in_the_month_they_were_charged() {
        let body = br#"{"bills": [
            {"ownerID": "a", "createTime": "1764550000", "startTime": "1764460800", "payAmount": "90720000", "tradeType": "monthly_new_buy"},
            {"ownerID": "a", "createTime": "1764460000", "payAmount": "5"}
        ]}"#;
        let t = decode_bills(body, BillKind::Prepaid, MONTH).unwrap();
        assert_eq!(
            t.by_owner.get("a"),
            Some(&Spend {
                paid: 90_720_000,
                through: None
            })
        );
    }

    #[test]
    fn a_bill_without_an_amount_or_no_bills_array_is_refused() {
        assert_eq!(
            decode_bills(
                br#"{"bills": [{"ownerID": "a", "startTime": "1764547200"}]}"#,
                BillKind::PayAsYouGo,
                MONTH
            ),
            Err(DecodeError::NotBills)
        );
        assert_eq!(
            decode_bills(br#"{"data": []}"#, BillKind::PayAsYouGo, MONTH),
            Err(DecodeError::NotBills)
        );
        assert_eq!(
            decode_bills(br#"{"bills": []} trailing"#, BillKind::PayAsYouGo, MONTH),
            Err(DecodeError::NotBills)
        );
        assert!(decode_bills(br#"{"bills": []}"#, BillKind::PayAsYouGo, MONTH).is_ok());
    }

    #[test]
    fn the_balance_is_read_at_the_top_or_under_data() {
        assert_eq!(
            decode_balance(br#"{"availableBalance": "1234500", "cashBalance": "1"}"#),
            Ok(Amount::new(1_234_500, 4))
        );
        assert_eq!(
            decode_balance(br#"{"data": {"availableBalance": 7}}"#),
            Ok(Amount::new(7, 4))
        );
        assert_eq!(
            decode_balance(br#"{"credit_balance": 7}"#),
            Err(DecodeError::NoBalance)
        );
    }

    #[test]
    fn bill_queries_name_the_window_and_the_owner() {
        let q = BillQuery {
            kind: BillKind::PayAsYouGo,
            window: MONTH,
            owner: Some("i-1".into()),
        };
        assert_eq!(q.path(), BILLS_PATH);
        assert_eq!(
            q.pairs(),
            vec![
                ("cycleType", "Month".to_string()),
                ("productCategory", "gpu".to_string()),
                ("startTime", "1764547200".to_string()),
                ("endTime", "1767225599".to_string()),
                ("ownerId", "i-1".to_string()),
            ]
        );
    }
}
