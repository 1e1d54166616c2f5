//! The `PpioInstance` custom resource: the API users write (spec) and read (status).
//!
//! `///` comments on these types become the schema descriptions that `kubectl explain`
//! prints, so they are written for users. Developer notes use `//`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of the resource.
pub const GROUP: &str = "gpus.ppio.com";
/// The name of the CRD object.
pub const CRD_NAME: &str = "ppioinstances.gpus.ppio.com";
/// Set this annotation to a new value (e.g. the current time) to make the operator poll the
/// instance now; the value is echoed in `status.lastHandledRefresh` once acted on.
pub const REFRESH_ANNOTATION: &str = "gpus.ppio.com/refresh";
/// The label a Secret must carry (value `"true"`) to serve as PPIO credentials through
/// `spec.credentialsSecretRef`.
pub const CREDENTIALS_LABEL: &str = "gpus.ppio.com/credentials";
/// Where the generated CRD is committed.
pub const CRD_PATH: &str = "crds/ppioinstances.gpus.ppio.com.yaml";

/// Tracks one PPIO GPU instance: the operator polls the PPIO API for the instance named by
/// spec.instanceId and writes its state, endpoints, billing and pricing into status. The
/// operator only observes; it never creates, changes or deletes the instance.
// The printcolumn entries repeat `type_` and `priority` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gpus.ppio.com",
    version = "v1alpha1",
    kind = "PpioInstance",
    plural = "ppioinstances",
    singular = "ppioinstance",
    shortname = "ppioi",
    category = "ppio",
    namespaced,
    status = "PpioInstanceStatus",
    derive = "PartialEq",
    doc = "PpioInstance mirrors one PPIO GPU instance into Kubernetes. Set spec.instanceId; the operator fills status with the instance's state, resources, endpoints, billing and pricing, and the Ready, Synced, Reconciling and Stalled conditions.",
    printcolumn(
        name = "Instance",
        type_ = "string",
        json_path = ".spec.instanceId",
        description = "The PPIO instance ID"
    ),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.state",
        description = "The instance state reported by PPIO"
    ),
    printcolumn(
        name = "GPUs",
        type_ = "integer",
        json_path = ".status.resources.gpuNum",
        description = "Number of GPUs"
    ),
    printcolumn(
        name = "Region",
        type_ = "string",
        json_path = ".status.region",
        description = "PPIO region"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "True when the instance is running"
    ),
    printcolumn(
        name = "Synced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Synced\")].status",
        description = "True when the last poll of the PPIO API succeeded"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "IP",
        type_ = "string",
        json_path = ".status.network.ip",
        priority = 1,
        description = "Private network IP"
    ),
    printcolumn(
        name = "Billing",
        type_ = "string",
        json_path = ".status.billing.mode",
        priority = 1,
        description = "Billing mode"
    ),
    printcolumn(
        name = "Cost/h",
        type_ = "string",
        json_path = ".status.cost.hourly",
        priority = 1,
        description = "What the instance costs per hour at its current price (when its unit could be calibrated)"
    ),
    printcolumn(
        name = "Currency",
        type_ = "string",
        json_path = ".status.cost.currency",
        priority = 1,
        description = "The currency of the cost figures"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PpioInstanceSpec {
    /// The ID of the PPIO instance to observe (1-255 characters: letters, digits, '.', '_'
    /// and '-', starting with a letter or digit). Immutable: create a new PpioInstance to
    /// track another instance.
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("instanceId is immutable; create a new PpioInstance to track another instance"))]
    pub instance_id: String,

    /// The Secret, in this PpioInstance's namespace, that holds the PPIO API key. When
    /// omitted the operator uses its own default key (its PPIO_API_KEY environment variable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,

    /// How often to poll the PPIO API, as a duration of hours, minutes, seconds and
    /// milliseconds (for example 30s, 5m, 1h or 1m30s), between 10s and 24h. While the instance is in a
    /// transitional state (starting, stopping, ...) it is polled at least every 10s. When
    /// omitted the operator's --default-refresh-interval applies (60s unless configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]{1,9}(h|ms|m|s))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s') && duration(self) <= duration('24h')").message("refreshInterval must be between 10s and 24h"))]
    pub refresh_interval: Option<String>,

    /// When true the operator stops polling this instance; status keeps the last observation
    /// and the Synced condition reports Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// The state this PpioInstance expects the instance in (GitOps): with it, Ready means
    /// "the observed state is the expected one", and a stable state other than the expected
    /// one past the grace period sets Stalled=True UnexpectedState. Omitted: Ready means
    /// "running", and no state is drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,

    /// Opt-in: an owned Secret, in this namespace, with how to connect to the instance (ssh
    /// host, port, user and password, the web terminal's, Jupyter's and each port's
    /// endpoint). Needs an operator installed with exports.connectionSecrets.enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret: Option<ConnectionSecretSpec>,

    /// Opt-in: a Service without selector and its EndpointSlices, carrying the instance's
    /// ports, so that Pods reach the instance by a cluster name. Needs an operator installed
    /// with exports.services.enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceExportSpec>,
}

/// The connection Secret to write.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSecretSpec {
    /// The Secret's name. The operator writes it only when it is its own (created by it for
    /// this PpioInstance); another Secret of that name is never touched.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// The Service to write.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportSpec {
    /// The Service's name; omitted: the PpioInstance's name. The operator writes it only when
    /// it is its own; another Service of that name is never touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
}

/// The state a GitOps repository expects an instance in.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Expectation {
    /// The expected PPIO state, e.g. running (the default) or exited for a parked notebook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z][A-Za-z0-9_-]*$")
    )]
    pub state: Option<String>,
    /// How long a stable state other than the expected one may last before it is drift, as a
    /// duration such as 10m (the default) or 1h; at most 168h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]{1,9}(h|ms|m|s))+$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('168h')").message("gracePeriod must be at most 168h"))]
    pub grace_period: Option<String>,
}

/// A reference to one key of a Secret in the PpioInstance's own namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// The key within the Secret whose value is the PPIO API key. Defaults to "apiKey".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
}

/// The key used when credentialsSecretRef.key is omitted.
pub const DEFAULT_SECRET_KEY: &str = "apiKey";

impl SecretKeyRef {
    /// The key to read, with the default applied.
    pub fn key_or_default(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_SECRET_KEY)
    }
}

/// The last observation of the PPIO instance. Written only by the operator.
// The API server shows `status: {observedGeneration: 0}` until the first observation, so that
// kstatus and Flux read a PpioInstance no operator has answered yet as in progress, not as
// current.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {"observedGeneration": 0}))]
pub struct PpioInstanceStatus {
    /// The metadata.generation that this status answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The instance ID that the observation below belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The instance state as PPIO reports it (for example running, exited, starting), or
    /// NotFound once PPIO no longer knows the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The error PPIO reports for the instance, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_error: Option<String>,
    /// The message PPIO reports for the instance, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_message: Option<String>,
    /// The instance name in PPIO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The instance type (for example gpu).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// The PPIO product the instance runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    /// The container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The registry credential ID used to pull the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth_id: Option<String>,
    /// The PPIO region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The region version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_version: Option<String>,
    /// The owning account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    /// The member of the account that created the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// When the instance was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When the instance was last started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_started_at: Option<String>,
    /// When the instance was last stopped (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stopped_at: Option<String>,
    /// The instance's compute resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The private network (VPC) the instance is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Volumes mounted into the instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// How the instance is billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<Billing>,
    /// Automatic migration settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_migrate: Option<AutoMigrate>,
    /// How to reach the instance. Passwords are never copied here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// Prices as PPIO reports them: integers carried through unchanged (PPIO does not state a
    /// currency or unit for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// What the instance costs: its hourly cost, calibrated against PPIO's products catalogue,
    /// and what PPIO billed for it this month. Decimal strings, never floats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// The value of the gpus.ppio.com/refresh annotation that the operator last acted on. Set
    /// the annotation to a new value to poll the instance now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_refresh: Option<String>,
    /// Synced: whether the last poll of the PPIO API succeeded. Ready: whether the instance
    /// is running. Reconciling: the operator is still working towards a current observation
    /// (a transitional state, or a transient failure it retries). Stalled: nothing improves
    /// without a person (the instance is gone, the key is refused or missing, or the answer
    /// cannot be mirrored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl PpioInstanceStatus {
    /// The condition of this type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// Compute resources of the instance.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Number of GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_num: Option<i64>,
    /// Number of CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_num: Option<i64>,
    /// Memory in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<i64>,
    /// Root filesystem size in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_size_gb: Option<i64>,
    /// Indexes of the GPUs assigned to the instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_ids: Vec<i64>,
}

/// The instance's private network.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// The VPC ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The instance's IP address in the VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A volume mounted into the instance.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// The volume type (for example network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// The volume ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Where the volume is mounted in the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<String>,
}

/// Billing of the instance.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Billing {
    /// The billing mode: postpaid, prepaid or spot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The prepaid term; only for prepaid instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepaid: Option<Prepaid>,
}

/// A prepaid term.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Prepaid {
    /// Length of the term in months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub months: Option<i64>,
    /// When the term ends (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Automatic renewal of the term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_renew: Option<AutoRenew>,
}

/// Automatic renewal of a prepaid term.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AutoRenew {
    /// Whether the term renews automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Months added at each renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub months: Option<i64>,
    /// The renewal status as PPIO reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Automatic migration settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AutoMigrate {
    /// Whether PPIO may migrate the instance automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Whether a migration includes the system disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_system_disk: Option<bool>,
}

/// How to reach the instance.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Exposed ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// The Jupyter endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jupyter: Option<Jupyter>,
    /// SSH access (never the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<Ssh>,
    /// The web terminal (never the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_terminal: Option<WebTerminal>,
    /// Log endpoints, as PPIO reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogEndpoints>,
}

/// An exposed port.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// The port inside the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// The protocol (for example tcp or http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The public address of the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// The Jupyter endpoint.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Jupyter {
    /// The URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Whether Jupyter is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The port Jupyter listens on in the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

/// SSH access. The password is never copied.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Ssh {
    /// The ssh command line to connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// The web terminal. The password is never copied.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebTerminal {
    /// The URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Whether the web terminal is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Log endpoints.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LogEndpoints {
    /// The instance log endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_endpoint: Option<String>,
    /// The system log endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_endpoint: Option<String>,
}

/// What an instance costs. Amounts are decimal strings in `currency`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// ISO 4217 code of the amounts: from the operator's --currency, else from the PPIO host
    /// (api.ppio.com: CNY, api.novita.ai: USD); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Money per hour at the instance's current price, a decimal string; absent when the
    /// unit of pricing.instancePrice could not be calibrated (hourlyBasis: Unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<String>,
    /// How pricing.instancePrice matched the products catalogue: perInstance, perCard, or
    /// Unknown (no match: the hourly cost is not published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_basis: Option<String>,
    /// Billed this calendar month (UTC) according to PPIO's bills (after vouchers), a decimal
    /// string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_to_date: Option<String>,
    /// The end of the last settled hour included in monthToDate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_through: Option<String>,
}

/// Prices as PPIO reports them.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// The instance price (integer as reported by PPIO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_price: Option<i64>,
    /// The instance list price before discounts (integer as reported by PPIO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_base_price: Option<i64>,
    /// The root filesystem storage price (integer as reported by PPIO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_storage_price: Option<i64>,
    /// Prepaid prices per term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepaid: Option<PrepaidPricing>,
    /// Spot instance information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<Spot>,
}

/// Prepaid prices.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PrepaidPricing {
    /// The price of each prepaid term.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monthly_price: Vec<MonthlyPrice>,
}

/// The price of one prepaid term. A value in currency units is price / 10^pricePrecision.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MonthlyPrice {
    /// Length of the term in months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<i64>,
    /// The price of the term (integer as reported by PPIO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<i64>,
    /// The list price of the term (integer as reported by PPIO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_price: Option<i64>,
    /// The number of decimal digits in price and basePrice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_precision: Option<i64>,
    /// The PPIO ID of this term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_spec_id: Option<String>,
}

/// Spot instance information.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Spot {
    /// The spot status as PPIO reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When PPIO will reclaim the instance (RFC 3339); omitted when no reclaim is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_time: Option<String>,
}

/// The CRD as YAML: what `ppio-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let crd = PpioInstance::crd();
    let body = serde_yaml::to_string(&crd)?;
    Ok(format!(
        "# Generated by `ppio-operator crd` from the Rust types in src/crd.rs; do not edit.\n{body}"
    ))
}

/// `ppio-operator crd`: prints the CRD YAML to stdout.
pub fn print() -> Result<(), serde_yaml::Error> {
    print!("{}", crd_yaml()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn the_names_derive_from_the_group() {
        assert_eq!(PpioInstance::group(&()), GROUP);
        assert_eq!(CRD_NAME, format!("{}.{GROUP}", PpioInstance::plural(&())));
        assert_eq!(PpioInstance::crd().metadata.name.as_deref(), Some(CRD_NAME));
        assert_eq!(REFRESH_ANNOTATION, format!("{GROUP}/refresh"));
        assert_eq!(CREDENTIALS_LABEL, format!("{GROUP}/credentials"));
    }
}
