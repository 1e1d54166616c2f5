//! The PPIO v2 instance object as it arrives on the wire, decoded leniently.
//!
//! PPIO sends integers as numbers or as numeric strings, omits or nulls whole blocks and adds
//! fields without notice. Every field here is optional and a field of the wrong shape reads as
//! absent instead of failing the whole decode. Secrets in the object (`envs`, `command`,
//! `entrypoint`) have no field here, so they are never decoded at all. The two passwords
//! (`tools.ssh.password`, `tools.web_terminal.password`) are decoded as a [`Password`], which
//! prints as `<redacted>`, serializes nowhere and is read only by the connection Secret export.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;
use std::ops::Range;

/// Deserializes a field and keeps it only when it has the expected shape. An array of which
/// some elements have the wrong shape keeps the others (one odd port does not drop all ports).
///
/// The field is taken as a borrowed slice of the response ([`RawValue`]) and decoded from that
/// text, so no JSON tree is built on the way: decoding costs about what the result holds, not
/// a multiple of the body (a 1 MiB body of tiny numbers would otherwise take tens of MiB).
/// Wire types must therefore be decoded from text (`serde_json::from_slice`/`from_str`).
pub(crate) fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let raw: &'de RawValue = Deserialize::deserialize(d)?;
    let text = raw.get();
    if let Ok(t) = serde_json::from_str::<T>(text) {
        return Ok(Some(t));
    }
    // An array with odd elements: keep each element that decodes as a one-element array.
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text) else {
        return Ok(None);
    };
    let good: Vec<&str> = items
        .iter()
        .map(|item| item.get())
        .filter(|item| serde_json::from_str::<T>(&format!("[{item}]")).is_ok())
        .collect();
    Ok(serde_json::from_str::<T>(&format!("[{}]", good.join(","))).ok())
}

/// A JSON scalar, read without building a tree: an array or object is refused at its first
/// byte.
enum Scalar {
    Bool(bool),
    Number(serde_json::Number),
    String(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Scalar, E> {
                serde_json::Number::from_f64(n)
                    .map(Scalar::Number)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar::String(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Scalar, E> {
                Ok(Scalar::String(s))
            }
        }
        d.deserialize_any(V)
    }
}

/// An integer sent as a JSON number (integral) or as a numeric string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = match Scalar::deserialize(d)? {
            Scalar::Number(n) => Value::Number(n),
            Scalar::String(s) => Value::String(s),
            Scalar::Bool(b) => Value::Bool(b),
        };
        int_from_value(&v)
            .map(Int)
            .ok_or_else(|| serde::de::Error::custom("expected an integer or a numeric string"))
    }
}

fn int_from_value(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
}

/// A text field; numbers and booleans are accepted and shown as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Scalar::deserialize(d)? {
            Scalar::String(s) => Text(s),
            Scalar::Number(n) => Text(n.to_string()),
            Scalar::Bool(b) => Text(b.to_string()),
        })
    }
}

/// A boolean; `"true"`/`"false"` strings and 0/1 are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Bool(b) => Ok(Flag(b)),
            Scalar::String(s) if s.eq_ignore_ascii_case("true") => Ok(Flag(true)),
            Scalar::String(s) if s.eq_ignore_ascii_case("false") => Ok(Flag(false)),
            Scalar::Number(n) if n.as_i64() == Some(0) => Ok(Flag(false)),
            Scalar::Number(n) if n.as_i64() == Some(1) => Ok(Flag(true)),
            _ => Err(serde::de::Error::custom("expected a boolean")),
        }
    }
}

/// A password of the instance (`tools.ssh.password`, `tools.web_terminal.password`). It
/// prints as `<redacted>` (a debug print, a log line, a panic message never shows it), has no
/// `Display` and no `Serialize`, and is read through [`Password::expose`] by the connection
/// Secret export alone.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Password(String);

impl Password {
    /// The password itself: only for the connection Secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

macro_rules! wire_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Deserialize)]
        pub struct $name {
            $(
                #[serde(default, deserialize_with = "lenient")]
                pub $field: Option<$ty>,
            )*
        }
    };
}
pub(crate) use wire_struct;

wire_struct! {
    /// One instance, as `GET /gpus/v2/instances/{id}` returns it.
    pub struct Instance {
        id: Text,
        name: Text,
        r#type: Text,
        product_id: Text,
        image: Text,
        registry_auth_id: Text,
        billing: Billing,
        ports: Vec<Port>,
        resource_specs: ResourceSpecs,
        network: Network,
        volumes: Vec<Volume>,
        region: Text,
        tools: Tools,
        auto_migrate: AutoMigrate,
        status: State,
        pricing: Pricing,
        created_at: Int,
        last_started_at: Int,
        last_stopped_at: Int,
        member_id: Text,
        owner_id: Text,
        region_version: Text,
    }
}

wire_struct! {
    /// `billing`.
    pub struct Billing { mode: Text, prepaid: Prepaid }
}
wire_struct! {
    /// `billing.prepaid`.
    pub struct Prepaid { months: Int, end_time: Int, auto_renew: AutoRenew }
}
wire_struct! {
    /// `billing.prepaid.auto_renew`.
    pub struct AutoRenew { enabled: Flag, months: Int, status: Text }
}
wire_struct! {
    /// One of `ports`.
    pub struct Port { port: Int, protocol: Text, endpoint: Text }
}
wire_struct! {
    /// `resource_specs`.
    pub struct ResourceSpecs { rootfs_size_gb: Int, gpu_num: Int, cpu_num: Int, memory_gb: Int, gpu_ids: Vec<Int> }
}
wire_struct! {
    /// `network`.
    pub struct Network { id: Text, ip: Text }
}
wire_struct! {
    /// One of `volumes`.
    pub struct Volume { r#type: Text, id: Text, mount_point: Text }
}
wire_struct! {
    /// `tools`: endpoints and the two passwords.
    pub struct Tools { jupyter: Jupyter, ssh: Ssh, web_terminal: WebTerminal, log: Log }
}
wire_struct! {
    /// `tools.jupyter`.
    pub struct Jupyter { endpoint: Text, enabled: Flag, port: Int }
}
wire_struct! {
    /// `tools.ssh`.
    pub struct Ssh { command: Text, username: Text, password: Password }
}
wire_struct! {
    /// `tools.web_terminal`.
    pub struct WebTerminal { endpoint: Text, enabled: Flag, username: Text, password: Password }
}
wire_struct! {
    /// `tools.log`.
    pub struct Log { instance_endpoint: Text, system_endpoint: Text }
}
wire_struct! {
    /// `auto_migrate`.
    pub struct AutoMigrate { enabled: Flag, include_system_disk: Flag }
}
wire_struct! {
    /// `status`: the instance state.
    pub struct State { status: Text, error: Text, message: Text }
}
wire_struct! {
    /// `pricing`.
    pub struct Pricing { instance_price: Int, instance_base_price: Int, rootfs_storage_price: Int, prepaid: PrepaidPricing, spot: Spot }
}
wire_struct! {
    /// `pricing.prepaid`.
    pub struct PrepaidPricing { monthly_price: Vec<MonthlyPrice> }
}
wire_struct! {
    /// One of `pricing.prepaid.monthly_price`.
    pub struct MonthlyPrice { price: Int, base_price: Int, month: Int, price_precision: Int, month_spec_id: Text }
}
wire_struct! {
    /// `pricing.spot`.
    pub struct Spot { spot_status: Text, spot_reclaim_time: Int }
}

/// Why a response body could not be read as an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the response body is not a JSON object")]
    NotAnObject,
    #[error("the response carries no instance state (status.status)")]
    NoState,
    #[error("the response is not a page of instances (no data array)")]
    NotAPage,
    #[error("the response is not a products catalogue (no data array)")]
    NotACatalogue,
    #[error("the response is not a list of bills (no bills array, or a bill without an amount)")]
    NotBills,
    #[error("the response carries no available balance")]
    NoBalance,
}

/// Whether a body is a JSON object (its first non-blank byte is `{`).
pub(crate) fn starts_an_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// One page of `GET /gpus/v2/instances`. Its items are kept as the JSON text they came in
/// and decoded on demand: a walk that meets an item it has seen before, byte for byte, need
/// not decode it again.
#[derive(Clone, Default, PartialEq)]
pub struct InstancePage {
    /// The page's body.
    body: String,
    /// Where each item that is a JSON object lies in `body`.
    items: Vec<Range<usize>>,
    /// The cursor of the next page, opaque; `None` when empty or absent.
    pub next_cursor: Option<String>,
    /// Whether another page follows.
    pub has_more: bool,
}

/// Without the body: it carries what an instance must never show (env values, commands,
/// passwords), so a debug print (a log line, a panic message) gives only its shape.
impl std::fmt::Debug for InstancePage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePage")
            .field("items", &self.items.len())
            .field("body_bytes", &self.body.len())
            .field("next_cursor", &self.next_cursor)
            .field("has_more", &self.has_more)
            .finish()
    }
}

/// A page's `data`: an array of items, or `null`. (With `deserialize_with` and no
/// `default`, an absent `data` still fails the decode.)
fn nullable_items<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<&'de RawValue>>, D::Error> {
    Option::<Vec<&'de RawValue>>::deserialize(d)
}

impl InstancePage {
    /// Reads a LIST body: a JSON object with a `data` array, `next_cursor` and `has_more`.
    /// The items are checked to be JSON, not decoded.
    pub fn from_slice(body: &[u8]) -> Result<InstancePage, DecodeError> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            // `null` is an empty page; absent, the body is not a page.
            #[serde(borrow, deserialize_with = "nullable_items")]
            data: Option<Vec<&'a RawValue>>,
            #[serde(default, deserialize_with = "lenient")]
            next_cursor: Option<Text>,
            #[serde(default, deserialize_with = "lenient")]
            has_more: Option<Flag>,
        }
        if !starts_an_object(body) {
            return Err(DecodeError::NotAnObject);
        }
        let text = std::str::from_utf8(body).map_err(|_| DecodeError::NotAnObject)?;
        let raw: Raw = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                DecodeError::NotAPage
            } else {
                DecodeError::NotAnObject
            }
        })?;
        // Each item borrows from `text`: its place is where its slice starts.
        let base = text.as_ptr() as usize;
        let items = raw
            .data
            .iter()
            .flatten()
            .map(|item| item.get())
            .filter(|item| item.starts_with('{'))
            .map(|item| {
                let start = item.as_ptr() as usize - base;
                start..start + item.len()
            })
            .collect();
        Ok(InstancePage {
            items,
            next_cursor: raw.next_cursor.map(|t| t.0).filter(|c| !c.is_empty()),
            has_more: raw.has_more.is_some_and(|f| f.0),
            body: text.to_owned(),
        })
    }

    /// The JSON text of each item that is a JSON object (LIST items lack `tools` and
    /// `pricing`).
    pub fn item_texts(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter_map(|r| self.body.get(r.clone()))
    }

    /// The items, decoded; an item that does not decode is skipped.
    pub fn items(&self) -> impl Iterator<Item = Instance> + '_ {
        self.item_texts().filter_map(Instance::from_item)
    }

    /// How many items the page holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the page holds no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl Instance {
    /// Decodes a `GET /gpus/v2/instances/{id}` body. Fails only when the body is not a JSON
    /// object or carries no instance state; everything else is optional.
    pub fn from_slice(body: &[u8]) -> Result<Instance, DecodeError> {
        if !starts_an_object(body) {
            return Err(DecodeError::NotAnObject);
        }
        let instance: Instance =
            serde_json::from_slice(body).map_err(|_| DecodeError::NotAnObject)?;
        match instance.state() {
            Some(s) if !s.is_empty() => Ok(instance),
            _ => Err(DecodeError::NoState),
        }
    }

    /// Decodes one item of a LIST page (its text, from [`InstancePage::item_texts`]); `None`
    /// when it is not a JSON object. Unlike a GET, an item without a state is kept.
    pub fn from_item(text: &str) -> Option<Instance> {
        if !text.starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    /// The reported state (`status.status`).
    pub fn state(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .map(|t| t.0.as_str())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_page_prints_its_shape_never_its_body() {
        let body = r#"{"data":[{"id":"a","envs":[{"key":"TOKEN","value":"s3cr3t-env"}],"command":"run --password hunter2"}],"next_cursor":"c2","has_more":true}"#;
        let page = InstancePage::from_slice(body.as_bytes()).expect("a page");
        let shown = format!("{page:?}");
        assert!(
            !shown.contains("s3cr3t-env") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(
            shown.contains("items: 1") && shown.contains("c2"),
            "{shown}"
        );
    }

    use super::*;

    #[test]
    fn numbers_as_strings_and_garbage_fields() {
        let body = br#"{"status":{"status":"running"},"resource_specs":{"memory_gb":"62","gpu_num":2,"cpu_num":"x"},
            "created_at":"1785780950","last_stopped_at":"0","tools":"nonsense","volumes":null,"extra":{"a":1}}"#;
        let i = Instance::from_slice(body).expect("decodes");
        let r = i.resource_specs.expect("specs");
        assert_eq!(r.memory_gb, Some(Int(62)));
        assert_eq!(r.gpu_num, Some(Int(2)));
        assert_eq!(r.cpu_num, None);
        assert_eq!(i.created_at, Some(Int(1785780950)));
        assert_eq!(i.last_stopped_at, Some(Int(0)));
        assert!(i.tools.is_none());
        assert!(i.volumes.is_none());
    }

    #[test]
    fn one_malformed_array_element_drops_only_itself() {
        let body = br#"{"status":{"status":"running"},
            "ports":[{"port":8080,"protocol":"tcp"},"garbage",{"port":{"x":1},"protocol":"udp"},{"port":22}],
            "resource_specs":{"gpu_ids":[0,"1","two",3]}}"#;
        let i = Instance::from_slice(body).expect("decodes");
        let ports = i.ports.expect("ports kept");
        // "garbage" is not an object and is skipped; a port whose number is an object keeps
        // its other fields (each field is lenient on its own).
        assert_eq!(ports.len(), 3);
        assert_eq!(ports[0].port, Some(Int(8080)));
        assert_eq!(ports[1].port, None);
        assert_eq!(ports[2].port, Some(Int(22)));
        let gpu_ids = i
            .resource_specs
            .and_then(|r| r.gpu_ids)
            .expect("gpu ids kept");
        assert_eq!(gpu_ids, vec![Int(0), Int(1), Int(3)]);
    }

    #[test]
    fn a_list_page_decodes_and_skips_odd_items() {
        let body = br#"{"data":[{"id":"a","status":{"status":"running"}},7,{"id":"b"}],
            "next_cursor":"o2","has_more":true,"total":3}"#;
        let page = InstancePage::from_slice(body).expect("decodes");
        assert_eq!(page.len(), 2);
        let items: Vec<Instance> = page.items().collect();
        assert_eq!(items[1].id, Some(Text("b".into())));
        assert_eq!(page.next_cursor.as_deref(), Some("o2"));
        assert!(page.has_more);
        let last = InstancePage::from_slice(br#"{"data":[],"next_cursor":"","has_more":false}"#)
            .expect("decodes");
        assert_eq!(last.next_cursor, None);
        assert!(!last.has_more);
        assert_eq!(
            InstancePage::from_slice(br#"{"items":[]}"#),
            Err(DecodeError::NotAPage)
        );
        // `"data": null` is an empty page, which may still point to the next one.
        let null = InstancePage::from_slice(br#"{"data":null,"next_cursor":"o3","has_more":true}"#)
            .expect("decodes");
        assert!(null.is_empty());
        assert_eq!(null.next_cursor.as_deref(), Some("o3"));
        assert!(null.has_more);
        assert_eq!(
            InstancePage::from_slice(b"<html>"),
            Err(DecodeError::NotAnObject)
        );
    }

    #[test]
    fn rejects_non_objects_and_missing_state() {
        assert_eq!(Instance::from_slice(b"[1]"), Err(DecodeError::NotAnObject));
        assert_eq!(
            Instance::from_slice(b"{\"id\":"),
            Err(DecodeError::NotAnObject)
        );
        assert_eq!(
            Instance::from_slice(b"<html>"),
            Err(DecodeError::NotAnObject)
        );
        assert_eq!(Instance::from_slice(b"{}"), Err(DecodeError::NoState));
        assert_eq!(
            Instance::from_slice(br#"{"status":{"status":""}}"#),
            Err(DecodeError::NoState)
        );
    }
}
