//! `ppio-operator import`: onboard an account. Lists every instance an API key can see (the
//! paged LIST endpoint, all pages, with the API's filters) and prints one PpioInstance manifest
//! per instance, for a GitOps repository. It reads from PPIO only: it never writes to PPIO or
//! to a cluster, and the same instances always give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

use kube::api::ObjectMeta;

use crate::args::ConfigError;
use crate::crd::{PpioInstance, PpioInstanceSpec, SecretKeyRef};
use crate::ppio::{ApiKey, ListQuery, PpioApi, PpioError, wire};

/// The annotation that carries the instance's name in PPIO.
pub const NAME_ANNOTATION: &str = "gpus.ppio.com/instance-name";
/// The annotation that carries the instance's region.
pub const REGION_ANNOTATION: &str = "gpus.ppio.com/region";
/// The longest manifest name: a DNS-1123 label, so it also fits where a label is needed.
pub const MAX_NAME: usize = 63;
/// The longest annotation value copied from PPIO.
const MAX_ANNOTATION: usize = 253;
/// A walk stops after this many pages (a server that never says `has_more: false`).
const MAX_PAGES: usize = 100_000;

/// Options of `ppio-operator import`. The API key comes from `PPIO_API_KEY` only.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The namespace of the manifests.
    #[arg(long, value_parser = crate::args::parse_namespace)]
    pub namespace: String,

    #[command(flatten)]
    pub ppio: crate::args::PpioArgs,

    /// Only instances whose name or id contains this text (the API's `name` filter).
    #[arg(long)]
    pub name: Option<String>,

    /// Only instances in this state, e.g. running (the API's `status` filter).
    #[arg(long)]
    pub state: Option<String>,

    /// Only instances in these regions (repeatable or comma separated).
    #[arg(long = "region", value_delimiter = ',')]
    pub regions: Vec<String>,

    /// Only instances with this billing mode: postpaid, prepaid or spot.
    #[arg(long)]
    pub billing_mode: Option<String>,

    /// Name a Secret in the namespace as every manifest's spec.credentialsSecretRef.
    #[arg(long, value_parser = parse_secret_name)]
    pub credentials_secret: Option<String>,

    /// The key in that Secret (default: apiKey).
    #[arg(long, requires = "credentials_secret")]
    pub credentials_key: Option<String>,

    /// Write one file per instance (NAME.yaml) into this folder instead of one YAML stream to
    /// standard output. A symlink in the folder is replaced, never followed.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// With --output-dir: remove the files an earlier import wrote there for instances that
    /// are no longer listed (only files that begin with the import's marker line).
    #[arg(long, requires = "output_dir")]
    pub prune: bool,

    /// Instances per LIST request (1..1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
}

fn parse_secret_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| crate::args::parse_namespace(l).is_ok());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid Secret name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// The checked configuration of `import`.
pub struct ImportConfig {
    pub ppio: Box<dyn PpioApi>,
    pub key: ApiKey,
    pub query: ListQuery,
    pub namespace: String,
    pub credentials: Option<SecretKeyRef>,
    pub output_dir: Option<PathBuf>,
    /// Remove files of instances no longer listed from `output_dir`.
    pub prune: bool,
}

impl ImportArgs {
    /// Checks the arguments and reads `PPIO_API_KEY`; contacts nothing.
    pub fn config(self) -> Result<ImportConfig, ConfigError> {
        let ppio = self.ppio.client()?;
        let key = std::env::var("PPIO_API_KEY")
            .ok()
            .and_then(|k| ApiKey::new(&k))
            .ok_or_else(|| ConfigError {
                flag: "PPIO_API_KEY",
                message: "set this environment variable to the API key to import with (the key is never a flag)".into(),
            })?;
        let text = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(ImportConfig {
            ppio: Box::new(ppio),
            key,
            query: ListQuery {
                limit: self.page_size,
                cursor: None,
                name: text(self.name),
                status: text(self.state),
                regions: self
                    .regions
                    .into_iter()
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty())
                    .collect(),
                billing_mode: text(self.billing_mode),
            },
            namespace: self.namespace,
            credentials: self.credentials_secret.map(|name| SecretKeyRef {
                name,
                key: self.credentials_key,
            }),
            output_dir: self.output_dir,
            prune: self.prune,
        })
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("listing instances failed: {0}")]
    List(#[source] PpioError),
    #[error(
        "listing instances failed: the PPIO API returned the same page cursor twice; the walk was stopped"
    )]
    CursorLoop,
    #[error("listing instances failed: more than {MAX_PAGES} pages")]
    TooManyPages,
    #[error("--output-dir {dir}: {source}")]
    Write {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no instance was listed: --prune would remove every file an import wrote; check the key and the filters (nothing was changed)"
    )]
    PruneEverything,
    #[error("cannot write the manifests: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("cannot render a manifest: {0}")]
    Render(#[from] serde_yaml::Error),
}

/// One instance as the import sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub region: String,
}

/// `ppio-operator import`: lists, then writes the manifests.
pub async fn run(config: ImportConfig) -> Result<(), ImportError> {
    let (listed, pages, skipped) =
        list_all(config.ppio.as_ref(), &config.key, &config.query).await?;
    let manifests = manifests(&listed, &config.namespace, config.credentials.as_ref())?;
    match &config.output_dir {
        None => {
            let mut out = std::io::stdout().lock();
            let stream: String = manifests.iter().map(|(_, y)| format!("---\n{y}")).collect();
            out.write_all(stream.as_bytes())
                .and_then(|()| out.flush())
                .map_err(ImportError::Stdout)?;
        }
        Some(dir) => {
            let fail = |source| ImportError::Write {
                dir: dir.display().to_string(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(fail)?;
            let mut written = BTreeSet::new();
            for (l, (name, yaml)) in listed.iter().zip(&manifests) {
                let file = format!("{name}.yaml");
                write_new(dir, &file, &format!("{MARKER}{}\n{yaml}", l.id)).map_err(fail)?;
                written.insert(file);
            }
            if config.prune && listed.is_empty() {
                return Err(ImportError::PruneEverything);
            }
            warn_duplicates(dir, &listed, &written);
            if config.prune {
                let pruned = prune(dir, &written).map_err(fail)?;
                if pruned > 0 {
                    eprintln!("removed {pruned} file(s) of instances no longer listed");
                }
            }
        }
    }
    eprintln!(
        "imported {} instance(s) in {pages} page(s){}",
        manifests.len(),
        if skipped > 0 {
            format!("; skipped {skipped} item(s) without a usable instance id")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The first line of every file `import` writes into `--output-dir`: `--prune` removes only
/// files that begin with it.
pub const MARKER: &str = "# written by ppio-operator import for instance ";

/// Writes `dir/file` without following a symlink there: the text goes to a new file of its
/// own (created exclusively), which then replaces `file` by a rename (which replaces a
/// symlink itself, never its target).
fn write_new(dir: &std::path::Path, file: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, dir.join(file)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Says which files of `dir` without the import's marker (written by hand, or by an import
/// before names held the id) declare an instance this import just wrote under another name:
/// GitOps would create two PpioInstances for it. They are left for a person to remove.
fn warn_duplicates(dir: &std::path::Path, listed: &[Listed], written: &BTreeSet<String>) {
    use std::io::Read;
    let ids: BTreeSet<&str> = listed.iter().map(|l| l.id.as_str()).collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || written.contains(&name) {
            continue;
        }
        let mut text = String::new();
        let read = std::fs::File::open(entry.path())
            .and_then(|f| f.take(64 * 1024).read_to_string(&mut text));
        if read.is_err() || text.starts_with(MARKER) {
            continue;
        }
        let id = text.lines().find_map(|l| {
            l.trim_start()
                .strip_prefix("instanceId:")
                .map(|v| v.trim().trim_matches('"').to_string())
        });
        if let Some(id) = id.filter(|id| ids.contains(id.as_str())) {
            eprintln!(
                "warning: {name} also declares instance {id}, written now to another file; remove it (GitOps would create two PpioInstances)"
            );
        }
    }
}

/// Removes the files of `dir` that an import wrote ([`MARKER`]) and that are not in `keep`;
/// symlinks and other files are left alone. Returns how many it removed.
fn prune(dir: &std::path::Path, keep: &BTreeSet<String>) -> std::io::Result<usize> {
    use std::io::Read;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || keep.contains(&name) || !entry.file_type()?.is_file() {
            continue;
        }
        let mut head = vec![0; MARKER.len()];
        let ours = std::fs::File::open(entry.path())
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok_and(|()| head == MARKER.as_bytes());
        if ours {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Walks every page: the instances (each id once), the number of pages, and the number of
/// items skipped for a missing or unusable id.
pub async fn list_all(
    ppio: &dyn PpioApi,
    key: &ApiKey,
    query: &ListQuery,
) -> Result<(Vec<Listed>, usize, usize), ImportError> {
    let mut query = query.clone();
    query.cursor = None;
    let mut seen_cursors = BTreeSet::new();
    let mut by_id = BTreeMap::new();
    let mut skipped = 0;
    let mut pages = 0;
    loop {
        if pages >= MAX_PAGES {
            return Err(ImportError::TooManyPages);
        }
        let page = ppio
            .list_instances(key, &query)
            .await
            .map_err(ImportError::List)?;
        pages += 1;
        for item in page.items() {
            match listed(&item) {
                Some(l) => {
                    by_id.insert(l.id.clone(), l);
                }
                None => skipped += 1,
            }
        }
        match page.next_cursor.filter(|_| page.has_more) {
            None => break,
            Some(cursor) => {
                if !seen_cursors.insert(cursor.clone()) {
                    return Err(ImportError::CursorLoop);
                }
                query.cursor = Some(cursor);
            }
        }
    }
    Ok((by_id.into_values().collect(), pages, skipped))
}

fn text(t: &Option<wire::Text>) -> String {
    t.as_ref().map(|t| t.0.clone()).unwrap_or_default()
}

/// An item with an id the CRD accepts (`^[A-Za-z0-9][A-Za-z0-9._-]*$`, at most 255).
fn listed(item: &wire::Instance) -> Option<Listed> {
    let id = text(&item.id);
    let valid = (1..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    valid.then(|| Listed {
        id,
        name: clean(&text(&item.name)),
        region: clean(&text(&item.region)),
    })
}

/// Vendor text for an annotation: no control characters, bounded.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ANNOTATION)
        .collect()
}

/// A DNS-1123 label from free text: lowercase, runs of other characters become one `-`, at
/// most `max` characters, never empty.
pub fn slug(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out: String = out.chars().take(max).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "instance".chars().take(max).collect()
    } else {
        out
    }
}

/// The manifest name of one instance, from that instance alone (never from the others, so a
/// re-import after instances come and go renames nothing, and GitOps prunes nothing that
/// stays): the slug of its name, then the slug of its id. When the id's slug loses part of it
/// (upper case, `.`, `_`) or holds a `-` (where a name could end the same way), a short
/// digest of the id follows, so that no two instances share a name. An instance without a usable name is `instance-<id>`.
pub fn name_of(l: &Listed) -> String {
    let exact = slug(&l.id, MAX_NAME);
    // An id with `-` could end like another instance's name: its digest keeps them apart.
    let id = if exact == l.id && !l.id.contains('-') {
        exact
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, l.id.as_bytes());
        let short: String = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}-{short}", slug(&l.id, MAX_NAME - short.len() - 1))
    };
    let room = MAX_NAME.saturating_sub(id.len() + 1);
    if room == 0 {
        id
    } else {
        format!("{}-{id}", slug(&l.name, room))
    }
}

/// The manifest name of every instance, in the order given ([`name_of`]); should two still
/// be equal (a digest collision), the later ones get a number.
pub fn names(listed: &[Listed]) -> Vec<String> {
    let mut taken = BTreeSet::new();
    listed
        .iter()
        .map(|l| {
            let mut name = name_of(l);
            let mut n = 2;
            while !taken.insert(name.clone()) {
                let suffix = format!("-{n}");
                name = format!("{}{suffix}", slug(&name, MAX_NAME - suffix.len()));
                n += 1;
            }
            name
        })
        .collect()
}

/// (name, YAML) of every manifest, sorted by instance id.
pub fn manifests(
    listed: &[Listed],
    namespace: &str,
    credentials: Option<&SecretKeyRef>,
) -> Result<Vec<(String, String)>, serde_yaml::Error> {
    let names = names(listed);
    listed
        .iter()
        .zip(names)
        .map(|(l, name)| {
            let mut annotations = BTreeMap::new();
            if !l.name.is_empty() {
                annotations.insert(NAME_ANNOTATION.to_string(), l.name.clone());
            }
            if !l.region.is_empty() {
                annotations.insert(REGION_ANNOTATION.to_string(), l.region.clone());
            }
            let object = PpioInstance {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.to_string()),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..Default::default()
                },
                spec: PpioInstanceSpec {
                    instance_id: l.id.clone(),
                    credentials_secret_ref: credentials.cloned(),
                    refresh_interval: None,
                    suspend: None,
                    expect: None,
                    connection_secret: None,
                    service: None,
                },
                status: None,
            };
            Ok((name, yaml_1_1(&serde_yaml::to_value(&object)?)))
        })
        .collect()
}

/// The words YAML 1.1 reads as booleans or null (case aside), which kubectl, Argo CD and Flux
/// (all YAML 1.1 readers) would not take as strings.
const YAML_1_1_WORDS: &[&str] = &[
    "y", "yes", "n", "no", "on", "off", "true", "false", "null", "~",
];

/// Block-style YAML of `value` that reads the same in YAML 1.1 as in 1.2. A string stays plain
/// only when it is a word of letters, digits, spaces and `._/-` that begins with a letter and
/// is not one of [`YAML_1_1_WORDS`]; every other string (numbers, dates, `yes`, `on`, `~`,
/// anything with other characters) is double-quoted. The same value gives the same bytes.
fn yaml_1_1(value: &serde_yaml::Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

fn emit(value: &serde_yaml::Value, indent: usize, out: &mut String) {
    use serde_yaml::Value;
    let pad = " ".repeat(indent);
    match value {
        Value::Mapping(m) => {
            for (k, v) in m {
                out.push_str(&format!("{pad}{}:", scalar(k)));
                match v {
                    Value::Mapping(inner) if !inner.is_empty() => {
                        out.push('\n');
                        emit(v, indent + 2, out);
                    }
                    Value::Sequence(items) if !items.is_empty() => {
                        out.push('\n');
                        emit(v, indent, out);
                    }
                    _ => out.push_str(&format!(" {}\n", scalar(v))),
                }
            }
        }
        Value::Sequence(items) => {
            for item in items {
                match item {
                    Value::Mapping(_) | Value::Sequence(_) => {
                        // Nested collections as JSON, which YAML reads as flow style.
                        let json = serde_json::to_string(item).unwrap_or_default();
                        out.push_str(&format!("{pad}- {json}\n"));
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

/// One scalar (or an empty collection) as YAML text.
fn scalar(value: &serde_yaml::Value) -> String {
    use serde_yaml::Value;
    match value {
        Value::String(s) => {
            let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && !s.ends_with(' ')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '/' | '-'))
                && !YAML_1_1_WORDS.contains(&s.to_ascii_lowercase().as_str());
            if plain {
                s.clone()
            } else {
                // A JSON string is a YAML double-quoted scalar, escapes and all.
                serde_json::to_string(s).unwrap_or_default()
            }
        }
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "null".into(),
        Value::Mapping(_) => "{}".into(),
        Value::Sequence(_) => "[]".into(),
        Value::Tagged(t) => scalar(&t.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(id: &str, name: &str) -> Listed {
        Listed {
            id: id.into(),
            name: name.into(),
            region: "cn-south-1".into(),
        }
    }

    fn is_dns_label(s: &str) -> bool {
        (1..=63).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn slugs_are_dns_labels() {
        assert_eq!(slug("Trainer A", 63), "trainer-a");
        assert_eq!(slug("  GPU box #1 (prod) ", 63), "gpu-box-1-prod");
        assert_eq!(slug("", 63), "instance");
        assert_eq!(slug("日本語", 63), "instance");
        assert_eq!(slug("-x-", 63), "x");
        assert_eq!(slug(&"a".repeat(100), 63).len(), 63);
        assert_eq!(slug("ab-cd", 3), "ab");
    }

    #[test]
    fn a_name_depends_on_its_instance_alone_and_every_name_is_unique() {
        let listed = [
            l("ca338f12f3", "trainer"),
            l("b7e2c91d04", "Trainer"),
            l("c0ffee1234", "notebook"),
            l("d00", ""),
            l("e00", "!!!"),
            l("f00", "trainer-b7e2c91d04"),
            l("AbC", &"x".repeat(80)),
            l("abc", &"x".repeat(80)),
            l("a.b_c", "dots"),
        ];
        let names = names(&listed);
        assert_eq!(names[0], "trainer-ca338f12f3");
        assert_eq!(names[1], "trainer-b7e2c91d04");
        assert_eq!(names[2], "notebook-c0ffee1234");
        assert_eq!(names[3], "instance-d00");
        assert_eq!(names[4], "instance-e00");
        assert_eq!(names[5], "trainer-b7e2c91d04-f00");
        assert!(
            names[6].starts_with("xxx") && names[6].contains("-abc-"),
            "{}",
            names[6]
        );
        assert!(names[7].ends_with("-abc"), "{}", names[7]);
        assert!(names[8].starts_with("dots-a-b-c-"), "{}", names[8]);
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(names.iter().all(|n| is_dns_label(n)), "{names:?}");
        // An id with `-` cannot end like another instance's name.
        let dashed = super::names(&[l("c", "a-b"), l("b-c", "a")]);
        assert_ne!(dashed[0], dashed[1]);
        assert!(dashed[1].starts_with("a-b-c-"), "{dashed:?}");
        // Each name is the same whichever other instances there are.
        for (one, name) in listed.iter().zip(&names) {
            assert_eq!(&super::names(std::slice::from_ref(one))[0], name);
        }
    }

    #[test]
    fn strings_yaml_1_1_reads_otherwise_are_quoted_and_read_back_the_same() {
        let tricky = [
            "yes",
            "Yes",
            "on",
            "No",
            "off",
            "y",
            "N",
            "~",
            "true",
            "null",
            "12345",
            "1e3",
            "0x1F",
            "2024-01-01",
            ".inf",
            "-",
            "a: b",
            "# x",
            "trailing ",
            "",
            "100%",
        ];
        for word in tricky {
            let text = yaml_1_1(&serde_yaml::Value::Mapping(
                [(word.into(), word.into())].into_iter().collect(),
            ));
            assert!(
                text.starts_with('"') && text.contains(": \""),
                "{word:?} not quoted: {text}"
            );
            let back: BTreeMap<String, String> = serde_yaml::from_str(&text).expect("reads");
            assert_eq!(back.get(word).map(String::as_str), Some(word), "{text}");
        }
        for word in [
            "trainer-a",
            "Trainer A",
            "gpus.ppio.com/v1alpha1",
            "yesterday",
            "ca338f12f3",
        ] {
            let text = yaml_1_1(&serde_yaml::Value::String(word.into()));
            assert_eq!(text, format!("{word}\n"));
        }
    }

    #[test]
    fn a_manifest_is_valid_and_carries_name_region_and_credentials() {
        let creds = SecretKeyRef {
            name: "ppio-credentials".into(),
            key: None,
        };
        let m = manifests(&[l("ca338f12f3", "Trainer A")], "ml", Some(&creds)).expect("renders");
        assert_eq!(m[0].0, "trainer-a-ca338f12f3");
        assert_eq!(
            m[0].1,
            "apiVersion: gpus.ppio.com/v1alpha1\nkind: PpioInstance\nmetadata:\n  annotations:\n    gpus.ppio.com/instance-name: Trainer A\n    gpus.ppio.com/region: cn-south-1\n  name: trainer-a-ca338f12f3\n  namespace: ml\nspec:\n  instanceId: ca338f12f3\n  credentialsSecretRef:\n    name: ppio-credentials\n"
        );
    }

    #[test]
    fn vendor_text_is_cleaned_and_bad_ids_are_skipped() {
        let item: wire::Instance = serde_json::from_str(
            &serde_json::json!({"id": "ok-1", "name": "a\nb\u{7}c", "region": "r"}).to_string(),
        )
        .expect("item");
        assert_eq!(listed(&item).map(|l| l.name), Some("abc".to_string()));
        for bad in ["", "-x", "a/b", "..", "a b"] {
            let item: wire::Instance =
                serde_json::from_str(&serde_json::json!({ "id": bad }).to_string()).expect("item");
            assert_eq!(listed(&item), None, "{bad:?}");
        }
    }
}
