//! Each API key's books: its products catalogue, its bills this month and its balance, read
//! by a task of the key's own inside the key's request budget (the first reads ahead of
//! everything, later ones after the GETs and walk pages that observe instances), and what the
//! PpioInstances of the key need of them to show `status.cost`.
//!
//! * The catalogue is read as soon as a key is first used ([`FIRST_READ`]), ahead of its other
//!   requests, then every `catalogue_every` (prices change slowly).
//! * Bills are read a minute later ([`FIRST_BILLS`]), also ahead of the key's other requests
//!   the first time, then every `bills_every` and right after a month begins. A key keeps the
//!   totals of its own instances only (not its whole account's); an instance that comes after
//!   a read has the bills read again within [`UNCOVERED_BILLS`], its month to date shown
//!   unknown meanwhile. A key with few instances asks per instance (`ownerId`); a larger one asks
//!   for the whole account, and in slices of the month when an answer is over its cap.
//! * The balance is read with the bills; a call not served here is said once and not asked
//!   again for [`NOT_SERVED_RETRY`].
//!
//! A failing call (401, 429, 5xx, ...) keeps what was read before, is said once in the log
//! and counted in `ppio_api_requests`, and is tried again after [`RETRY`]: it never touches an
//! instance's observation. A key no PpioInstance used for [`IDLE`] has its books closed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use super::line::{Class, Lines};
use super::wakes::Waker;
use crate::lock;
use crate::metrics::Metrics;
use crate::money::status::MoneyView;
use crate::money::{Amount, BillTotals, Catalogue, Window};
use crate::ppio::{ApiKey, BillKind, BillQuery, PpioApi, PpioError};

/// A key's first catalogue read, this long after its first use: at once, ahead of the key's
/// other requests ([`Class::Books`]), so that its statuses show the hourly cost from their
/// first write (not written a second time when the catalogue comes).
pub const FIRST_READ: Duration = Duration::ZERO;
/// A key's first bill read, this long after its first use: the PpioInstances of a bulk apply
/// are known by then (a key with few asks for their bills one by one).
pub const FIRST_BILLS: Duration = Duration::from_secs(60);
/// A PpioInstance its key's bills do not answer for (it came after they were read) has them
/// read again within this long (under churn, a key's bills are read this often at most).
pub const UNCOVERED_BILLS: Duration = Duration::from_secs(600);
/// A failed read is tried again after this long.
pub const RETRY: Duration = Duration::from_secs(600);
/// A call not served here is asked again after this long.
pub const NOT_SERVED_RETRY: Duration = Duration::from_secs(24 * 3600);
/// Books of a key no PpioInstance used for this long are closed.
pub const IDLE: Duration = Duration::from_secs(600);
/// Up to this many instances, bills are asked for per instance (two calls each); above, for
/// the whole account.
pub const PER_OWNER_MAX: usize = 5;
/// Bills are read again this long after a month begins.
pub const MONTH_SETTLE: Duration = Duration::from_secs(300);
/// The shortest slice of a month a bill answer is asked for in.
pub const MIN_SLICE: i64 = 60;

/// How the operator reads money.
#[derive(Debug, Clone)]
pub struct MoneySettings {
    /// The currency of every amount; `None`: unknown (amounts are shown without one).
    pub currency: Option<String>,
    /// How often each key's catalogue is read; zero: never (no hourly cost).
    pub catalogue_every: Duration,
    /// How often each key's bills and balance are read; zero: never (no month to date).
    pub bills_every: Duration,
    /// `Expiring=True PrepaidEnding` this long before a prepaid term without auto-renew ends.
    pub horizon: Duration,
    /// A key's first catalogue read comes this long after its first use ([`FIRST_READ`]).
    pub first_read: Duration,
    /// A key's first bill read comes this long after its first use ([`FIRST_BILLS`]).
    pub first_bills: Duration,
}

impl MoneySettings {
    /// No money read at all (no catalogue, no bills); `Expiring` is still shown.
    pub fn off() -> MoneySettings {
        MoneySettings {
            catalogue_every: Duration::ZERO,
            bills_every: Duration::ZERO,
            ..MoneySettings::default()
        }
    }
}

impl Default for MoneySettings {
    fn default() -> Self {
        MoneySettings {
            currency: None,
            catalogue_every: Duration::from_secs(6 * 3600),
            bills_every: Duration::from_secs(3600),
            horizon: crate::money::status::DEFAULT_PREPAID_HORIZON,
            first_read: FIRST_READ,
            first_bills: FIRST_BILLS,
        }
    }
}

/// A PpioInstance's namespace and name.
type Object = (String, String);

/// What a key's books hold, shared with the PpioInstances that render from them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub catalogue: Option<Arc<Catalogue>>,
    pub bills: Option<(Arc<BillTotals>, Timestamp)>,
    /// Changes whenever the catalogue or the bills do.
    pub version: u64,
}

/// The balance as last asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Balance {
    Unknown,
    Served(Amount),
    NotServed,
}

/// One key's books.
struct Books {
    key: ApiKey,
    fingerprint: u64,
    state: Mutex<BookState>,
    wake: Notify,
}

struct BookState {
    snapshot: Snapshot,
    balance: Balance,
    /// The sum of the hourly costs of the key's running hourly-billed instances.
    burn: Amount,
    touched: Instant,
    next_catalogue: Instant,
    next_bills: Instant,
    /// Calls whose failure was said in the log (said again once they answered).
    said: HashSet<&'static str>,
    stopped: bool,
}

/// What the ledger keeps per PpioInstance.
#[derive(Debug, Clone, Default)]
struct Entry {
    key: u64,
    instance_id: String,
    /// The books' version its status was last computed from.
    rendered: u64,
    /// When its `Expiring` condition changes by itself.
    next_change: Option<Timestamp>,
    /// Its hourly cost while it runs on an hourly-billed mode (for the key's runway).
    hourly: Option<Amount>,
}

/// What the key's books read with.
pub(in crate::controller) struct Env {
    pub ppio: Arc<dyn PpioApi>,
    pub lines: Arc<Lines>,
    pub metrics: Arc<Metrics>,
    pub waker: Option<Waker>,
    pub settings: MoneySettings,
}

/// Every key's books, and which PpioInstance uses which.
pub struct Ledger {
    env: Arc<Env>,
    books: Arc<Mutex<HashMap<u64, Arc<Books>>>>,
    entries: Arc<Mutex<HashMap<Object, Entry>>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Ledger {
    pub(in crate::controller) fn new(env: Env) -> Ledger {
        Ledger {
            env: Arc::new(env),
            books: Arc::default(),
            entries: Arc::default(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The settings money is read and shown with.
    pub fn settings(&self) -> &MoneySettings {
        &self.env.settings
    }

    /// The queue its PpioInstances are woken through.
    pub(in crate::controller) fn waker(&self) -> Option<Waker> {
        self.env.waker.clone()
    }

    /// A PpioInstance uses `key` for `instance_id`: its books are opened (on first use) and
    /// kept open.
    pub(in crate::controller) fn note(
        &self,
        key: &ApiKey,
        fingerprint: u64,
        object: (&str, &str),
        id: &str,
    ) {
        {
            let mut entries = lock(&self.entries);
            let entry = entries
                .entry((object.0.to_string(), object.1.to_string()))
                .or_default();
            if entry.key != fingerprint || entry.instance_id != id {
                let old = std::mem::replace(
                    entry,
                    Entry {
                        key: fingerprint,
                        instance_id: id.to_string(),
                        ..Entry::default()
                    },
                );
                if let Some(hourly) = old.hourly
                    && let Some(books) = lock(&self.books).get(&old.key).cloned()
                {
                    let mut st = lock(&books.state);
                    st.burn = st.burn.minus(hourly);
                }
            }
        }
        // Without money reads no books are kept (the entry still says when the status
        // changes by itself).
        let s = &self.env.settings;
        if s.catalogue_every.is_zero() && s.bills_every.is_zero() {
            return;
        }
        let books = self.books_of(key, fingerprint);
        let mut st = lock(&books.state);
        let now = Instant::now();
        st.touched = now;
        // An instance the key's bills do not answer for (it came after they were read) has
        // them read again within UNCOVERED_BILLS.
        let uncovered = st
            .snapshot
            .bills
            .as_ref()
            .is_some_and(|(totals, _)| !totals.answers_for(id));
        if uncovered && st.next_bills > now + UNCOVERED_BILLS {
            st.next_bills = now + UNCOVERED_BILLS;
            drop(st);
            books.wake.notify_one();
        }
    }

    /// The books of a key, opened on first use (and again after they closed, idle).
    fn books_of(&self, key: &ApiKey, fingerprint: u64) -> Arc<Books> {
        let mut all = lock(&self.books);
        if let Some(b) = all.get(&fingerprint)
            && !lock(&b.state).stopped
        {
            return b.clone();
        }
        let now = Instant::now();
        let books = Arc::new(Books {
            key: key.clone(),
            fingerprint,
            state: Mutex::new(BookState {
                snapshot: Snapshot::default(),
                balance: Balance::Unknown,
                burn: Amount::default(),
                touched: now,
                next_catalogue: now + self.env.settings.first_read,
                next_bills: now + self.env.settings.first_bills,
                said: HashSet::new(),
                stopped: false,
            }),
            wake: Notify::new(),
        });
        all.insert(fingerprint, books.clone());
        let task = tokio::spawn(keep(
            self.env.clone(),
            books.clone(),
            self.entries.clone(),
            self.books.clone(),
        ));
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
        books
    }

    /// What a PpioInstance's key's books hold; `None` before it was noted.
    pub fn snapshot(&self, object: (&str, &str)) -> Option<Snapshot> {
        let key = lock(&self.entries)
            .get(&(object.0.to_string(), object.1.to_string()))?
            .key;
        let books = lock(&self.books).get(&key)?.clone();
        let snapshot = lock(&books.state).snapshot.clone();
        Some(snapshot)
    }

    /// The view a status is computed with.
    pub fn view<'a>(&'a self, snapshot: Option<&'a Snapshot>) -> MoneyView<'a> {
        MoneyView {
            currency: self.env.settings.currency.as_deref(),
            catalogue: snapshot.and_then(|s| s.catalogue.as_deref()),
            bills: snapshot.and_then(|s| s.bills.as_ref().map(|(b, at)| (b.as_ref(), *at))),
            horizon: self.env.settings.horizon,
        }
    }

    /// Records what a PpioInstance's status was computed from: the books' `version`, when its
    /// `Expiring` condition changes by itself, and its hourly cost while it runs on an
    /// hourly-billed mode (the key's runway sums them).
    pub(in crate::controller) fn rendered(
        &self,
        object: (&str, &str),
        version: u64,
        next_change: Option<Timestamp>,
        hourly: Option<Amount>,
    ) {
        let changed = {
            let mut entries = lock(&self.entries);
            match entries.get_mut(&(object.0.to_string(), object.1.to_string())) {
                Some(e) => {
                    e.rendered = version;
                    e.next_change = next_change;
                    let old = std::mem::replace(&mut e.hourly, hourly);
                    (old != hourly).then_some((e.key, old))
                }
                None => None,
            }
        };
        // The key's runway follows its running instances' hourly costs.
        if let Some((key, old)) = changed
            && let Some(books) = lock(&self.books).get(&key).cloned()
        {
            {
                let mut st = lock(&books.state);
                let burn = st.burn.plus(hourly.unwrap_or_default());
                st.burn = burn.minus(old.unwrap_or_default());
            }
            publish_account(&self.env, &books);
        }
    }

    /// Whether a PpioInstance's status must be computed again without a new observation: its
    /// key's books changed since, or its `Expiring` condition changes by itself now.
    pub fn stale(&self, object: (&str, &str), now: Timestamp) -> bool {
        let entries = lock(&self.entries);
        let Some(e) = entries.get(&(object.0.to_string(), object.1.to_string())) else {
            return false;
        };
        if e.next_change.is_some_and(|t| t <= now) {
            return true;
        }
        let version = lock(&self.books)
            .get(&e.key)
            .map_or(0, |b| lock(&b.state).snapshot.version);
        version != e.rendered
    }

    /// When a PpioInstance's status changes by itself (its `Expiring` condition, the grace
    /// period of `spec.expect`).
    pub fn next_change(&self, object: (&str, &str)) -> Option<Timestamp> {
        lock(&self.entries)
            .get(&(object.0.to_string(), object.1.to_string()))
            .and_then(|e| e.next_change)
    }

    /// A PpioInstance is deleted (or no longer uses a key).
    pub fn forget(&self, namespace: &str, name: &str) {
        let removed = lock(&self.entries).remove(&(namespace.to_string(), name.to_string()));
        if let Some(Entry {
            key,
            hourly: Some(hourly),
            ..
        }) = removed
            && let Some(books) = lock(&self.books).get(&key).cloned()
        {
            {
                let mut st = lock(&books.state);
                st.burn = st.burn.minus(hourly);
            }
            publish_account(&self.env, &books);
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Which read is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Catalogue,
    Bills,
}

/// A key's books, kept: reads what is due, in the key's budget, until no PpioInstance used
/// the key for [`IDLE`].
async fn keep(
    env: Arc<Env>,
    books: Arc<Books>,
    entries: Arc<Mutex<HashMap<Object, Entry>>>,
    all: Arc<Mutex<HashMap<u64, Arc<Books>>>>,
) {
    loop {
        // Locks in one order everywhere: entries, then the books, then a book's state.
        let used = lock(&entries).values().any(|e| e.key == books.fingerprint);
        let (due, at) = {
            let mut st = lock(&books.state);
            let now = Instant::now();
            if !used && now.saturating_duration_since(st.touched) >= IDLE {
                st.stopped = true;
                drop(st);
                close(&env, &books, &all);
                return;
            }
            next_read(&env.settings, &st, now)
        };
        if at > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(at.min(Instant::now() + IDLE)) => {}
                _ = books.wake.notified() => {}
            }
            continue;
        }
        let ids: BTreeSet<String> = lock(&entries)
            .values()
            .filter(|e| e.key == books.fingerprint)
            .map(|e| e.instance_id.clone())
            .collect();
        let before = lock(&books.state).snapshot.version;
        match due {
            Read::Catalogue => read_catalogue(&env, &books).await,
            Read::Bills => {
                let class = read_class(lock(&books.state).snapshot.bills.is_some());
                read_bills(&env, &books, &ids, class).await;
                read_balance(&env, &books, class).await;
            }
        }
        publish_account(&env, &books);
        if lock(&books.state).snapshot.version != before {
            wake_all(&env, &books, &entries);
        }
    }
}

/// The next read due and when.
fn next_read(settings: &MoneySettings, st: &BookState, now: Instant) -> (Read, Instant) {
    let far = now + IDLE;
    let catalogue = if settings.catalogue_every.is_zero() {
        far
    } else {
        st.next_catalogue
    };
    let bills = if settings.bills_every.is_zero() {
        far
    } else {
        st.next_bills
    };
    if catalogue <= bills {
        (Read::Catalogue, catalogue)
    } else {
        (Read::Bills, bills)
    }
}

/// The place of a read's calls in the key's line: ahead of everything while the books it
/// brings are not known yet (every status of the key waits for them: a handful of calls),
/// else routine (after the GETs and walk pages that observe instances).
fn read_class(known: bool) -> Class {
    if known { Class::Routine } else { Class::Books }
}

/// One money call, in the key's budget (a slot of `class`, handed out by the key's line after
/// any 429 pause of the key ends), counted in `ppio_api_requests{endpoint}`.
async fn call<T>(
    env: &Env,
    books: &Books,
    endpoint: &str,
    class: Class,
    request: impl std::future::Future<Output = Result<T, PpioError>>,
) -> Result<T, PpioError> {
    env.lines.slot(&books.key, books.fingerprint, class).await;
    let start = Instant::now();
    let result = request.await;
    let class = result
        .as_ref()
        .map_or_else(PpioError::request_class, |_| "2xx");
    env.metrics
        .api
        .request_on(endpoint, class, start.elapsed().as_secs_f64());
    result
}

async fn read_catalogue(env: &Env, books: &Books) {
    let class = read_class(lock(&books.state).snapshot.catalogue.is_some());
    let result = call(env, books, "products", class, env.ppio.products(&books.key)).await;
    let now = Instant::now();
    let mut st = lock(&books.state);
    st.next_catalogue = match result {
        Ok(catalogue) => {
            said_ok(env, &mut st, books, "products");
            st.snapshot.catalogue = Some(Arc::new(catalogue));
            st.snapshot.version += 1;
            now + env.settings.catalogue_every
        }
        Err(e) => now + failed(env, &mut st, books, "products", &e),
    };
}

/// Reads the month's bills (both kinds) and keeps them only when every answer came.
async fn read_bills(env: &Env, books: &Books, ids: &BTreeSet<String>, class: Class) {
    let read_at = Timestamp::now();
    let window = Window::month_to(read_at);
    let mut totals = BillTotals::default();
    let mut outcome = Ok(());
    for kind in [BillKind::PayAsYouGo, BillKind::Prepaid] {
        let owners: Vec<Option<String>> = if ids.len() <= PER_OWNER_MAX {
            ids.iter().cloned().map(Some).collect()
        } else {
            vec![None]
        };
        for owner in owners {
            match read_sliced(env, books, kind, window, owner, class).await {
                Ok(t) => totals.merge(t),
                Err(e) => outcome = Err(e),
            }
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_err() {
            break;
        }
    }
    // The key keeps its own instances' totals, not its whole account's.
    totals.keep_only(ids);
    let now = Instant::now();
    let mut st = lock(&books.state);
    let every = match outcome {
        Ok(()) => {
            said_ok(env, &mut st, books, "bills");
            st.snapshot.bills = Some((Arc::new(totals), read_at));
            st.snapshot.version += 1;
            env.settings.bills_every
        }
        Err(e) => failed(env, &mut st, books, "bills", &e),
    };
    st.next_bills = now + every.min(until_next_month(read_at));
}

/// One bill list over `window` (its first call a slot of `class`); an answer over its cap is
/// asked for again in halves of the window (down to [`MIN_SLICE`]), each a routine call.
async fn read_sliced(
    env: &Env,
    books: &Books,
    kind: BillKind,
    window: Window,
    owner: Option<String>,
    mut class: Class,
) -> Result<BillTotals, PpioError> {
    let mut pending = vec![window];
    let mut totals = BillTotals::default();
    while let Some(w) = pending.pop() {
        let query = BillQuery {
            kind,
            window: w,
            owner: owner.clone(),
        };
        let endpoint = match kind {
            BillKind::PayAsYouGo => "bills",
            BillKind::Prepaid => "monthly_bills",
        };
        let answer = call(
            env,
            books,
            endpoint,
            class,
            env.ppio.bills(&books.key, &query),
        )
        .await;
        class = Class::Routine;
        match answer {
            Ok(t) => totals.merge(t),
            Err(PpioError::TooLarge { limit }) => {
                match w.halves().filter(|_| w.end - w.start > MIN_SLICE) {
                    Some((a, b)) => {
                        pending.push(b);
                        pending.push(a);
                    }
                    None => return Err(PpioError::TooLarge { limit }),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(totals)
}

async fn read_balance(env: &Env, books: &Books, class: Class) {
    if lock(&books.state).balance == Balance::NotServed {
        return;
    }
    let result = call(env, books, "balance", class, env.ppio.balance(&books.key)).await;
    let mut st = lock(&books.state);
    match result {
        Ok(amount) => {
            said_ok(env, &mut st, books, "balance");
            st.balance = Balance::Served(amount);
        }
        Err(e) if e.call_not_served() => {
            env.metrics.api.set_call_unavailable(
                &super::key_label(books.fingerprint),
                "balance",
                true,
            );
            info!(
                key = super::key_label(books.fingerprint).as_str(),
                "the PPIO API does not serve the account balance here; ppio_account_balance and ppio_account_runway_hours stay absent for this key"
            );
            st.balance = Balance::NotServed;
        }
        Err(e) => {
            failed(env, &mut st, books, "balance", &e);
        }
    }
}

/// A failed read: said once (until the call answers again); returns when to try again.
fn failed(
    env: &Env,
    st: &mut BookState,
    books: &Books,
    call: &'static str,
    e: &PpioError,
) -> Duration {
    if e.call_not_served() {
        env.metrics
            .api
            .set_call_unavailable(&super::key_label(books.fingerprint), call, true);
        if st.said.insert(call) {
            info!(
                key = super::key_label(books.fingerprint).as_str(),
                call,
                "the PPIO API does not serve this call here; the figures it gives stay absent"
            );
        }
        return NOT_SERVED_RETRY;
    }
    if st.said.insert(call) {
        warn!(
            key = super::key_label(books.fingerprint).as_str(),
            call,
            error = %e,
            retry_in_s = RETRY.as_secs(),
            "reading money figures failed; the figures read before stay, and instance observation is not affected"
        );
    }
    RETRY
}

/// A call answers (again): a later failure is said again.
fn said_ok(env: &Env, st: &mut BookState, books: &Books, call: &'static str) {
    env.metrics
        .api
        .set_call_unavailable(&super::key_label(books.fingerprint), call, false);
    if st.said.remove(call) {
        info!(
            key = super::key_label(books.fingerprint).as_str(),
            call, "reading money figures works again"
        );
    }
}

/// How long until bills are read again for a new month.
fn until_next_month(now: Timestamp) -> Duration {
    let next = crate::money::month_start(now)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .checked_add(jiff::Span::new().months(1))
        .map(|z| z.timestamp())
        .unwrap_or(now);
    Duration::from_secs(u64::try_from((next - now).get_seconds().max(0)).unwrap_or(0))
        + MONTH_SETTLE
}

/// `ppio_account_balance` and `ppio_account_runway_hours` of a key.
fn publish_account(env: &Env, books: &Books) {
    let label = super::key_label(books.fingerprint);
    let (balance, burn) = {
        let st = lock(&books.state);
        (st.balance, st.burn)
    };
    let Balance::Served(balance) = balance else {
        env.metrics.account.forget(&label);
        return;
    };
    env.metrics
        .account
        .set(&label, env.settings.currency.as_deref(), balance, burn);
}

/// Every PpioInstance of the key computes its status again (no PPIO request).
fn wake_all(env: &Env, books: &Books, entries: &Mutex<HashMap<Object, Entry>>) {
    let Some(waker) = &env.waker else {
        return;
    };
    let objects: Vec<Object> = lock(entries)
        .iter()
        .filter(|(_, e)| e.key == books.fingerprint)
        .map(|(o, _)| o.clone())
        .collect();
    for (ns, name) in objects {
        waker.wake(ObjectRef::new(&name).within(&ns), books.fingerprint);
    }
}

/// Closes a key's books (idle), unless new books of the key took their place meanwhile.
fn close(env: &Env, books: &Arc<Books>, all: &Mutex<HashMap<u64, Arc<Books>>>) {
    let mut all = lock(all);
    if all
        .get(&books.fingerprint)
        .is_some_and(|b| Arc::ptr_eq(b, books))
    {
        all.remove(&books.fingerprint);
        let label = super::key_label(books.fingerprint);
        env.metrics.account.forget(&label);
        for call in ["products", "bills", "balance"] {
            env.metrics.api.set_call_unavailable(&label, call, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bills_are_read_again_right_after_a_month_begins() {
        let late: Timestamp = "2026-12-31T23:59:00Z".parse().unwrap();
        assert_eq!(
            until_next_month(late),
            Duration::from_secs(60) + MONTH_SETTLE
        );
        let early: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            until_next_month(early),
            Duration::from_secs(31 * 86_400) + MONTH_SETTLE
        );
    }
}
