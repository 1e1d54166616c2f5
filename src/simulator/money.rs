//! The vendor's read-only money calls, as PPIO documents them: the products catalogue
//! (`GET /gpus/v2/products`), pay-as-you-go bills (`GET /openapi/v1/billing/bill/list`),
//! prepaid bills (`GET /openapi/v1/billing/bill/monthly/list`) and the balance
//! (`GET /openapi/v1/billing/balance/detail`); their default answers, and the pay-as-you-go
//! bills generated from the instances served.
//!
//! Amounts in bills and the balance are numeric strings in 1/10000 of the currency; product
//! prices are integers with a `precision` (value = integer / 10^precision).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{Call, json_response, vendor_error_detail};
use super::{Fault, Simulator};
use crate::lock;

/// The fault id that applies to `GET /gpus/v2/products`.
pub const PRODUCTS_FAULT: &str = "_products";
/// The fault id that applies to `GET /openapi/v1/billing/bill/list`.
pub const BILLS_FAULT: &str = "_bills";
/// The fault id that applies to `GET /openapi/v1/billing/bill/monthly/list`.
pub const MONTHLY_BILLS_FAULT: &str = "_monthly_bills";
/// The fault id that applies to `GET /openapi/v1/billing/balance/detail`.
pub const BALANCE_FAULT: &str = "_balance";

/// The product id of the default catalogue (the built-in samples' `product_id`).
pub const DEFAULT_PRODUCT_ID: &str = "product-id";

/// The precision assumed for an instance whose product is not in the catalogue.
const UNKNOWN_PRECISION: u32 = 3;

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;

/// The default catalogue: one product, [`DEFAULT_PRODUCT_ID`], at precision 2 whose postpaid
/// `final_price` (100) is the built-in samples' `instance_price`.
pub fn default_products() -> Vec<Value> {
    vec![json!({
        "id": DEFAULT_PRODUCT_ID,
        "name": "Simulated GPU 24GB",
        "resource_spec": {
            "gpu_num": 1,
            "cpu_num": 8,
            "memory_gb": 32,
            "rootfs_size_gb": 20,
        },
        "billing_methods": ["postpaid", "spot", "prepaid"],
        "inventory_state": "normal",
        "pricing": {
            "precision": 2,
            "postpaid": {"base_price": 120, "final_price": 100, "unit": "per_hour"},
            "spot": {"base_price": 40, "final_price": 30, "unit": "per_hour"},
            "prepaid": [{
                "spec_id": "spec-1m",
                "duration_months": 1,
                "final_price": 72000,
                "base_price": 86400,
            }],
            "storage_price_per_gb": 5,
        },
    })]
}

/// The default balance detail: 100000.0000 available (numeric strings in 1/10000).
pub fn default_balance() -> Value {
    json!({
        "availableBalance": "1000000000",
        "cashBalance": "1000000000",
        "creditLimit": "0",
        "pendingCharges": "0",
        "outstandingInvoices": "0",
    })
}

impl Simulator {
    /// Replaces the products catalogue (the items `GET /gpus/v2/products` answers).
    pub fn set_products(&self, products: Vec<Value>) {
        lock(&self.state).products = products;
    }

    /// The products catalogue.
    pub fn products(&self) -> Vec<Value> {
        lock(&self.state).products.clone()
    }

    /// The pay-as-you-go bill rows: `Some` serves exactly these (filtered per query), `None`
    /// generates them from the running postpaid and spot instances (the default).
    pub fn set_bills(&self, bills: Option<Vec<Value>>) {
        lock(&self.state).bills = bills;
    }

    /// Replaces the prepaid (monthly) bill rows (default: none).
    pub fn set_monthly_bills(&self, bills: Vec<Value>) {
        lock(&self.state).monthly_bills = bills;
    }

    /// The balance detail served as given; `None`: the call answers 404 (not served).
    pub fn set_balance(&self, balance: Option<Value>) {
        lock(&self.state).balance = balance;
    }
}

/// The money calls: their names in the counters and their fault ids.
#[derive(Debug, Clone, Copy)]
enum MoneyCall {
    Products,
    Bills,
    MonthlyBills,
    Balance,
}

impl MoneyCall {
    fn name(self) -> &'static str {
        match self {
            MoneyCall::Products => "products",
            MoneyCall::Bills => "bills",
            MoneyCall::MonthlyBills => "monthly_bills",
            MoneyCall::Balance => "balance",
        }
    }

    fn fault_id(self) -> &'static str {
        match self {
            MoneyCall::Products => PRODUCTS_FAULT,
            MoneyCall::Bills => BILLS_FAULT,
            MoneyCall::MonthlyBills => MONTHLY_BILLS_FAULT,
            MoneyCall::Balance => BALANCE_FAULT,
        }
    }
}

/// What every money call does first: checks the key, counts the request, applies the call's
/// own fault (latency, then an error status). `Ok`: the fault (for the body) and the request
/// number. The fault for every instance (`*`) does not apply to these calls.
async fn begin(
    sim: &Simulator,
    headers: &HeaderMap,
    call: MoneyCall,
) -> Result<(Fault, u64), Box<Response>> {
    sim.authorize(headers, Call::Money(call.name()))?;
    let (fault, seq) = {
        let st = lock(&sim.state);
        (
            st.faults.get(call.fault_id()).cloned().unwrap_or_default(),
            st.request_seq,
        )
    };
    fault.delay().await;
    match fault.error_response(seq) {
        Some(r) => Err(Box::new(r)),
        None => Ok((fault, seq)),
    }
}

/// A 400 `INVALID_PARAMS` saying what was wrong.
fn bad_request(detail: &str, seq: u64) -> Response {
    vendor_error_detail(400, Some("INVALID_PARAMS"), Some(detail), seq)
}

/// A 200 with `answer` as JSON, or the fault's unusual body.
fn answer(fault: &Fault, answer: &Value) -> Response {
    json_response(StatusCode::OK, fault.body_bytes(answer))
}

/// `Some` non-empty trimmed text.
fn given(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

/// An integer sent as a JSON number or a numeric string.
fn int_of(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX))),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A non-negative integer sent as a JSON number or a numeric string.
fn uint_of(v: Option<&Value>) -> Option<u64> {
    int_of(v).and_then(|i| u64::try_from(i).ok())
}

/// The `[startTime, endTime]` window of a query (Unix seconds, both ends included; a
/// missing end is open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Window {
    start: Option<i64>,
    end: Option<i64>,
}

impl Window {
    /// Parses the query's bounds; `Err` names the bad one.
    fn parse(start: Option<&str>, end: Option<&str>) -> Result<Window, &'static str> {
        let bound = |v: Option<&str>, name: &'static str| match given(v) {
            None => Ok(None),
            Some(s) => s.parse::<i64>().map(Some).map_err(|_| name),
        };
        Ok(Window {
            start: bound(start, "startTime must be Unix seconds")?,
            end: bound(end, "endTime must be Unix seconds")?,
        })
    }

    /// Whether `[start, end]` (either unknown: open) overlaps the window.
    fn overlaps(self, start: Option<i64>, end: Option<i64>) -> bool {
        let starts_before_end = match (start, self.end) {
            (Some(s), Some(we)) => s <= we,
            _ => true,
        };
        let ends_after_start = match (end, self.start) {
            (Some(e), Some(ws)) => e >= ws,
            _ => true,
        };
        starts_before_end && ends_after_start
    }

    /// Whether `t` (unknown: yes) is within the window.
    fn contains(self, t: Option<i64>) -> bool {
        self.overlaps(t, t)
    }
}

/// Whether a row of `owner_field` and `category` passes the query's `ownerId` and category
/// filters. A row that does not state its category passes any category.
fn owner_and_category_match(row: &Value, owner: Option<&str>, category: &str) -> bool {
    let owner_ok = owner.is_none_or(|o| {
        row.get("ownerID")
            .or_else(|| row.get("ownerId"))
            .and_then(Value::as_str)
            == Some(o)
    });
    let category_ok = row
        .get("category")
        .and_then(Value::as_str)
        .is_none_or(|c| c == category);
    owner_ok && category_ok
}

#[derive(Debug, Deserialize)]
pub(super) struct ProductsQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    category: Option<String>,
}

/// `GET /gpus/v2/products?type=gpu&category=instance`: `{"data": [...]}`. Both parameters
/// are required; the catalogue is the `gpu`/`instance` one, so other values find nothing.
pub(super) async fn products(
    State(sim): State<Simulator>,
    query: Result<Query<ProductsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let (fault, seq) = match begin(&sim, &headers, MoneyCall::Products).await {
        Ok(ok) => ok,
        Err(r) => return *r,
    };
    let Ok(Query(q)) = query else {
        return bad_request("malformed query", seq);
    };
    let (Some(kind), Some(category)) = (given(q.kind.as_deref()), given(q.category.as_deref()))
    else {
        return bad_request("type and category are required", seq);
    };
    let data = if kind == "gpu" && category == "instance" {
        sim.products()
    } else {
        Vec::new()
    };
    answer(&fault, &json!({ "data": data }))
}

/// The `cycleType` of a bill query: the length of a bill row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycle {
    Hour,
    Day,
    Week,
    Month,
}

impl Cycle {
    fn parse(s: &str) -> Option<Cycle> {
        match s {
            "Hour" => Some(Cycle::Hour),
            "Day" => Some(Cycle::Day),
            "Week" => Some(Cycle::Week),
            "Month" => Some(Cycle::Month),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BillsQuery {
    cycle_type: Option<String>,
    product_category: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    owner_id: Option<String>,
}

/// `GET /openapi/v1/billing/bill/list`: `{"bills": [...]}`, not paged. Required `cycleType`
/// and `productCategory`; optional `startTime`, `endTime`, `ownerId` (`productName` is
/// accepted and not filtered on). Rows are the explicit ones when set, else generated.
pub(super) async fn bills(
    State(sim): State<Simulator>,
    query: Result<Query<BillsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let (fault, seq) = match begin(&sim, &headers, MoneyCall::Bills).await {
        Ok(ok) => ok,
        Err(r) => return *r,
    };
    let Ok(Query(q)) = query else {
        return bad_request("malformed query", seq);
    };
    let Some(cycle) = given(q.cycle_type.as_deref()).and_then(Cycle::parse) else {
        return bad_request("cycleType must be Hour, Day, Week or Month", seq);
    };
    let Some(category) = given(q.product_category.as_deref()) else {
        return bad_request("productCategory is required", seq);
    };
    let window = match Window::parse(q.start_time.as_deref(), q.end_time.as_deref()) {
        Ok(w) => w,
        Err(detail) => return bad_request(detail, seq),
    };
    let owner = given(q.owner_id.as_deref());
    let rows = {
        let st = lock(&sim.state);
        match &st.bills {
            Some(explicit) => Rows::Explicit(
                explicit
                    .iter()
                    .filter(|r| owner_and_category_match(r, owner, category))
                    .filter(|r| {
                        window.overlaps(int_of(r.get("startTime")), int_of(r.get("endTime")))
                    })
                    .cloned()
                    .collect(),
            ),
            None => {
                let catalogue = Catalogue::new(&st.products);
                Rows::Charged(
                    st.instances
                        .values()
                        .filter(|i| {
                            owner.is_none_or(|o| i.get("id").and_then(Value::as_str) == Some(o))
                        })
                        .filter_map(|i| Charged::of(i, &catalogue))
                        .collect(),
                )
            }
        }
    };
    let bills = match rows {
        Rows::Explicit(rows) => rows,
        Rows::Charged(charged) if category == "gpu" => {
            let now = unix_now();
            let mut out = Vec::new();
            for c in &charged {
                c.rows(cycle, window, now, &mut out);
            }
            out
        }
        Rows::Charged(_) => Vec::new(),
    };
    answer(&fault, &json!({ "bills": bills }))
}

/// The bill rows of a query, read under the lock: explicit rows, or the instances to charge
/// (rows are generated after the lock is released).
enum Rows {
    Explicit(Vec<Value>),
    Charged(Vec<Charged>),
}

#[derive(Debug, Deserialize)]
pub(super) struct MonthlyBillsQuery {
    category: Option<String>,
    #[serde(rename = "startTime")]
    start_time: Option<String>,
    #[serde(rename = "endTime")]
    end_time: Option<String>,
    #[serde(rename = "ownerId")]
    owner_id: Option<String>,
}

/// `GET /openapi/v1/billing/bill/monthly/list`: `{"bills": [...]}`, the explicit prepaid rows
/// whose `createTime` is within `[startTime, endTime]` and whose `ownerID` is `ownerId`.
pub(super) async fn monthly_bills(
    State(sim): State<Simulator>,
    query: Result<Query<MonthlyBillsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let (fault, seq) = match begin(&sim, &headers, MoneyCall::MonthlyBills).await {
        Ok(ok) => ok,
        Err(r) => return *r,
    };
    let Ok(Query(q)) = query else {
        return bad_request("malformed query", seq);
    };
    let Some(category) = given(q.category.as_deref()) else {
        return bad_request("category is required", seq);
    };
    let window = match Window::parse(q.start_time.as_deref(), q.end_time.as_deref()) {
        Ok(w) => w,
        Err(detail) => return bad_request(detail, seq),
    };
    let owner = given(q.owner_id.as_deref());
    let bills: Vec<Value> = lock(&sim.state)
        .monthly_bills
        .iter()
        .filter(|r| owner_and_category_match(r, owner, category))
        .filter(|r| window.contains(int_of(r.get("createTime"))))
        .cloned()
        .collect();
    answer(&fault, &json!({ "bills": bills }))
}

/// `GET /openapi/v1/billing/balance/detail`: the balance as set, or 404 when it is not
/// served.
pub(super) async fn balance(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    let (fault, seq) = match begin(&sim, &headers, MoneyCall::Balance).await {
        Ok(ok) => ok,
        Err(r) => return *r,
    };
    let balance = lock(&sim.state).balance.clone();
    match balance {
        Some(b) => answer(&fault, &b),
        None => vendor_error_detail(
            404,
            Some("NOT_FOUND"),
            Some("the balance detail is not served here"),
            seq,
        ),
    }
}

/// What bills need of a catalogue product.
#[derive(Debug, Clone)]
struct Product {
    precision: u32,
    name: Option<String>,
    pricing: Value,
}

/// The catalogue by product id.
struct Catalogue(HashMap<String, Product>);

impl Catalogue {
    fn new(products: &[Value]) -> Catalogue {
        Catalogue(
            products
                .iter()
                .filter_map(|p| {
                    let id = p.get("id").and_then(Value::as_str)?;
                    let pricing = p.get("pricing").cloned().unwrap_or(Value::Null);
                    let precision = uint_of(pricing.get("precision"))
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(UNKNOWN_PRECISION);
                    let name = p.get("name").and_then(Value::as_str).map(str::to_string);
                    Some((
                        id.to_string(),
                        Product {
                            precision,
                            name,
                            pricing,
                        },
                    ))
                })
                .collect(),
        )
    }
}

/// `price` at `precision` in 1/10000 (integer; saturating, truncating below 1/10000).
fn ten_thousandths(price: u64, precision: u32) -> u64 {
    if precision <= 4 {
        price.saturating_mul(10u64.pow(4 - precision))
    } else {
        10u64.checked_pow(precision - 4).map_or(0, |d| price / d)
    }
}

/// An instance that is charged by the hour: running, postpaid or spot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Charged {
    id: String,
    product_id: String,
    product_name: String,
    created: i64,
    /// The hourly amount after discount, in 1/10000.
    hourly: u64,
    /// The hourly list price, in 1/10000.
    base_hourly: u64,
}

impl Charged {
    /// `instance` if it is charged by the hour. Its hourly amount is its
    /// `pricing.instance_price` (else its product's final price for its billing mode) at its
    /// product's precision (3 when the product is unknown).
    fn of(instance: &Value, catalogue: &Catalogue) -> Option<Charged> {
        let str_at = |p: &str| instance.pointer(p).and_then(Value::as_str);
        let mode = str_at("/billing/mode")?;
        if !matches!(mode, "postpaid" | "spot") || str_at("/status/status") != Some("running") {
            return None;
        }
        let id = str_at("/id")?.to_string();
        let product_id = str_at("/product_id").unwrap_or_default().to_string();
        let product = catalogue.0.get(&product_id);
        let precision = product.map_or(UNKNOWN_PRECISION, |p| p.precision);
        let product_price =
            |field: &str| product.and_then(|p| uint_of(p.pricing.get(mode)?.get(field)));
        let price = uint_of(instance.pointer("/pricing/instance_price"))
            .or_else(|| product_price("final_price"))
            .unwrap_or(0);
        let base_price = uint_of(instance.pointer("/pricing/instance_base_price"))
            .or_else(|| product_price("base_price"))
            .unwrap_or(price);
        Some(Charged {
            product_name: product
                .and_then(|p| p.name.clone())
                .unwrap_or_else(|| product_id.clone()),
            id,
            product_id,
            created: int_of(instance.get("created_at")).unwrap_or(0),
            hourly: ten_thousandths(price, precision),
            base_hourly: ten_thousandths(base_price, precision),
        })
    }

    /// Appends this instance's rows of `cycle` to `out`: charged from the later of the
    /// month's start and its creation to the last whole hour before `now`, clipped to
    /// `window`.
    fn rows(&self, cycle: Cycle, window: Window, now: i64, out: &mut Vec<Value>) {
        let month = month_start(now);
        let mut from = month.max(self.created);
        let mut to = floor_to(now, HOUR);
        if let Some(ws) = window.start {
            from = from.max(ws);
        }
        if let Some(we) = window.end {
            to = to.min(we.saturating_add(1));
        }
        if from >= to {
            return;
        }
        let length = match cycle {
            Cycle::Hour => HOUR,
            Cycle::Day => DAY,
            Cycle::Week => WEEK,
            Cycle::Month => next_month_start(now) - month,
        };
        let mut cycle_start = month + (from - month) / length * length;
        while cycle_start < to {
            let start = cycle_start.max(from);
            let end = (cycle_start + length).min(to);
            out.push(self.row(start, end));
            cycle_start += length;
        }
    }

    /// The row charging `[start, end)`: every hour it touches, in full.
    fn row(&self, start: i64, end: i64) -> Value {
        let hours = u64::try_from((ceil_to(end, HOUR) - floor_to(start, HOUR)) / HOUR).unwrap_or(0);
        let amount = hours.saturating_mul(self.hourly);
        let display = if amount % 10_000 == 0 {
            json!(amount / 10_000)
        } else {
            // Display only: the exact amount is the string.
            json!(amount as f64 / 10_000.0)
        };
        json!({
            "userId": "user-1",
            "startTime": start.to_string(),
            "endTime": (end - 1).to_string(),
            "billingMethod": 1,
            "productName": self.product_name,
            "category": "gpu",
            "ownerID": self.id,
            "billNum0": hours.to_string(),
            "basePrice0": self.base_hourly.to_string(),
            "discountPrice0": self.hourly.to_string(),
            "amount": amount.to_string(),
            "voucherAmount": "0",
            "payAmount": amount.to_string(),
            "payAmountDisplay": display,
            "pricePrecision": 1,
            "productId": self.product_id,
        })
    }
}

/// Now in Unix seconds.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn floor_to(t: i64, unit: i64) -> i64 {
    t.div_euclid(unit) * unit
}

fn ceil_to(t: i64, unit: i64) -> i64 {
    -floor_to(-t, unit)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month) of a day since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The start of the UTC month of `t` (Unix seconds).
fn month_start(t: i64) -> i64 {
    let (y, m) = year_month(t.div_euclid(DAY));
    days_from_civil(y, m, 1) * DAY
}

/// The start of the UTC month after that of `t`.
fn next_month_start(t: i64) -> i64 {
    let (y, m) = year_month(t.div_euclid(DAY));
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1) * DAY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_boundaries_are_utc() {
        // 2025-12-01T00:00:00Z and 2026-01-01T00:00:00Z.
        assert_eq!(month_start(1_764_547_200), 1_764_547_200);
        assert_eq!(month_start(1_764_633_599), 1_764_547_200);
        assert_eq!(next_month_start(1_764_633_599), 1_767_225_600);
        assert_eq!(month_start(1_767_225_599), 1_764_547_200);
        // 2024-02-29T12:00:00Z: a leap February.
        assert_eq!(month_start(1_709_208_000), 1_706_745_600);
        assert_eq!(next_month_start(1_709_208_000), 1_709_251_200);
        assert_eq!(month_start(0), 0);
    }

    #[test]
    fn prices_scale_to_ten_thousandths() {
        assert_eq!(ten_thousandths(100, 2), 10_000);
        assert_eq!(ten_thousandths(12_600, 3), 126_000);
        assert_eq!(ten_thousandths(7, 4), 7);
        assert_eq!(ten_thousandths(123_456, 6), 1_234);
        assert_eq!(ten_thousandths(5, 40), 0);
        assert_eq!(ten_thousandths(u64::MAX, 0), u64::MAX);
    }

    fn charged(created: i64) -> Charged {
        Charged {
            id: "i".into(),
            product_id: "p".into(),
            product_name: "p".into(),
            created,
            hourly: 10_000,
            base_hourly: 12_000,
        }
    }

    #[test]
    fn rows_follow_the_cycle_and_the_window() {
        // 2025-12-03T10:20:00Z.
        let now = 1_764_547_200 + 2 * DAY + 10 * HOUR + 20 * 60;
        let sum = |rows: &[Value]| {
            rows.iter()
                .map(|r| r["amount"].as_str().and_then(|a| a.parse::<u64>().ok()))
                .sum::<Option<u64>>()
                .expect("amounts")
        };
        for (cycle, n) in [
            (Cycle::Month, 1),
            (Cycle::Week, 1),
            (Cycle::Day, 3),
            (Cycle::Hour, 58),
        ] {
            let mut out = Vec::new();
            charged(0).rows(cycle, Window::default(), now, &mut out);
            assert_eq!(out.len(), n, "{cycle:?}");
            assert_eq!(sum(&out), 58 * 10_000, "{cycle:?}");
            assert_eq!(out[0]["startTime"], "1764547200");
            assert_eq!(
                out[n - 1]["endTime"],
                (1_764_547_200 + 58 * HOUR - 1).to_string()
            );
        }
        // Created mid-hour: that hour is charged in full.
        let mut out = Vec::new();
        charged(1_764_547_200 + DAY + 30 * 60).rows(Cycle::Month, Window::default(), now, &mut out);
        assert_eq!(out[0]["billNum0"], "34");
        assert_eq!(
            out[0]["startTime"],
            (1_764_547_200 + DAY + 30 * 60).to_string()
        );
        // A window on the second day.
        let window = Window {
            start: Some(1_764_547_200 + DAY),
            end: Some(1_764_547_200 + 2 * DAY - 1),
        };
        let mut out = Vec::new();
        charged(0).rows(Cycle::Day, window, now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["amount"], "240000");
        assert_eq!(out[0]["payAmountDisplay"], 24);
        // Created after the last whole hour: nothing yet.
        let mut out = Vec::new();
        charged(now - 60).rows(Cycle::Hour, Window::default(), now, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn windows_overlap_and_contain() {
        let w = Window {
            start: Some(10),
            end: Some(20),
        };
        assert!(w.overlaps(Some(0), Some(10)));
        assert!(w.overlaps(Some(20), Some(30)));
        assert!(!w.overlaps(Some(0), Some(9)));
        assert!(!w.overlaps(Some(21), Some(30)));
        assert!(w.overlaps(None, None));
        assert!(w.contains(Some(15)) && !w.contains(Some(21)));
        assert_eq!(
            Window::parse(Some("x"), None),
            Err("startTime must be Unix seconds")
        );
        assert_eq!(Window::parse(Some(" "), Some("")), Ok(Window::default()));
    }
}
