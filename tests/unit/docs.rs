//! The documentation as a reader meets it: the README stays a user's page (under 450 lines)
//! and links every page of docs/; every relative link in the README, docs/ and tests/README.md
//! names a file of the repository (never one outside it), and every `#anchor` a heading of
//! the page it points into.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The pages checked: the README, every page of docs/, and the tests' README.
fn pages() -> Vec<PathBuf> {
    let root = Path::new(REPO);
    let mut pages = vec![root.join("README.md"), root.join("tests/README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The targets of the markdown links `[text](target)` of a page, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, only letters, digits, `-` and `_`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// `path` with `.` and `..` resolved, without touching the file system.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn the_readme_is_a_users_page_and_links_every_page_of_docs() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).expect("README");
    let lines = readme.lines().count();
    assert!(
        lines <= 450,
        "the README has {lines} lines; move detail to docs/"
    );
    for page in pages()
        .iter()
        .filter(|p| p.starts_with(Path::new(REPO).join("docs")))
    {
        let name = page.file_name().expect("name").to_string_lossy();
        assert!(
            readme.contains(&format!("](docs/{name}")),
            "the README does not link docs/{name}"
        );
    }
    for want in [
        "architecture.md",
        "development.md",
        "scale.md",
        "runbooks.md",
        "gitops.md",
    ] {
        assert!(
            Path::new(REPO).join("docs").join(want).is_file(),
            "docs/{want}"
        );
    }
}

#[test]
fn every_relative_link_resolves_inside_the_repository() {
    let root = normal(Path::new(REPO));
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        let dir = page.parent().expect("dir");
        for target in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                page.clone()
            } else {
                normal(&dir.join(file))
            };
            let shown = page
                .strip_prefix(&root)
                .unwrap_or(&page)
                .display()
                .to_string();
            if !resolved.starts_with(&root) {
                broken.push(format!("{shown}: {target} points outside the repository"));
                continue;
            }
            if !resolved.exists() {
                broken.push(format!("{shown}: {target} does not exist"));
                continue;
            }
            if let Some(anchor) = anchor
                && resolved.extension().is_some_and(|e| e == "md")
            {
                let to = std::fs::read_to_string(&resolved).expect("target page");
                if !anchors(&to).contains(anchor) {
                    broken.push(format!("{shown}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_alert_has_its_runbook() {
    let rules = std::fs::read_to_string(
        Path::new(REPO).join("charts/ppio-operator/files/prometheus-rules.yaml"),
    )
    .expect("rules");
    let runbooks = anchors(
        &std::fs::read_to_string(Path::new(REPO).join("docs/runbooks.md")).expect("runbooks"),
    );
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for alert in alerts {
        assert!(
            runbooks.contains(&alert.to_lowercase()),
            "docs/runbooks.md has no section {alert}"
        );
        assert!(
            rules.contains(&format!("__RUNBOOK_URL__#{}", alert.to_lowercase())),
            "{alert}'s runbook_url"
        );
    }
}
