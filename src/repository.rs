//! The model repository: `<root>/<name>/<version>/` with `model.onnx` (or
//! `model.pt`) and an optional `model.toml`. Version directories are positive
//! integers, as in Triton. Directories whose name starts with `.` or `_`
//! (and plain files) at the root are not models and are skipped silently; an
//! invalid entry is reported with its path and reason and skipped — it never
//! stops the server.

mod metadata;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use metadata::{Lineage, ModelMetadata, Task};

use crate::config::valid_name;

/// The artifact formats contender serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Onnx,
    TorchScript,
}

impl Format {
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Onnx => "model.onnx",
            Format::TorchScript => "model.pt",
        }
    }
}

/// One valid model version.
#[derive(Clone, Debug)]
pub struct ModelEntry {
    pub name: String,
    pub version: u64,
    pub dir: PathBuf,
    pub format: Format,
    pub metadata: ModelMetadata,
}

impl ModelEntry {
    pub fn artifact(&self) -> PathBuf {
        self.dir.join(self.format.file_name())
    }

    /// Size of the model file in bytes (0 when unreadable).
    pub fn artifact_size(&self) -> u64 {
        std::fs::metadata(self.artifact())
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

/// An entry that was skipped, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub name: Option<String>,
    pub version: Option<u64>,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model repository {path} cannot be read: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The scanned repository.
#[derive(Clone, Debug, Default)]
pub struct Repository {
    root: PathBuf,
    models: BTreeMap<String, BTreeMap<u64, Arc<ModelEntry>>>,
    problems: Vec<Problem>,
}

impl Repository {
    /// Scans `root`. Only an unreadable root is an error; bad entries become [`Problem`]s.
    pub fn scan(root: &Path) -> Result<Repository, RepositoryError> {
        let unreadable = |source| RepositoryError::Unreadable {
            path: root.display().to_string(),
            source,
        };
        let mut repo = Repository {
            root: root.to_path_buf(),
            ..Repository::default()
        };
        let mut names: Vec<_> = std::fs::read_dir(root)
            .map_err(unreadable)?
            .filter_map(Result::ok)
            .collect();
        names.sort_by_key(|e| e.file_name());
        for model_dir in names {
            let path = model_dir.path();
            let Some(name) = model_dir.file_name().to_str().map(str::to_owned) else {
                repo.problem(&path, None, None, "model directory name is not UTF-8");
                continue;
            };
            if name.starts_with(['.', '_']) || !path.is_dir() {
                continue;
            }
            if !valid_name(&name) {
                repo.problem(
                    &path,
                    Some(&name),
                    None,
                    "model names use letters, digits, '_', '-' and '.'",
                );
                continue;
            }
            let versions = match std::fs::read_dir(&path) {
                Ok(v) => v,
                Err(e) => {
                    repo.problem(&path, Some(&name), None, &format!("cannot be read: {e}"));
                    continue;
                }
            };
            let mut found = 0;
            for version_dir in versions.filter_map(Result::ok) {
                let vpath = version_dir.path();
                if !vpath.is_dir() {
                    continue;
                }
                found += 1;
                match read_entry_named(&vpath, &name) {
                    Ok(entry) => {
                        repo.models
                            .entry(name.clone())
                            .or_default()
                            .insert(entry.version, Arc::new(entry));
                    }
                    Err(reason) => {
                        let version = version_dir
                            .file_name()
                            .to_str()
                            .and_then(|v| v.parse().ok());
                        repo.problem(&vpath, Some(&name), version, &reason);
                    }
                }
            }
            if found == 0 {
                repo.problem(
                    &path,
                    Some(&name),
                    None,
                    "no version directories (expected <name>/<version>/)",
                );
            }
        }
        Ok(repo)
    }

    /// Scans the same root again, as at start: versions added (or fixed)
    /// since are new entries; versions already known keep their entry (the
    /// one a loaded model came from); versions gone from disk are dropped
    /// unless `keep` holds on to them (loaded models).
    pub fn rescan(
        &self,
        keep: impl Fn(&ModelEntry) -> bool,
    ) -> Result<Repository, RepositoryError> {
        let mut fresh = Repository::scan(&self.root)?;
        for (name, versions) in &self.models {
            for (version, entry) in versions {
                let on_disk = fresh.get(name, *version).is_some();
                if on_disk || keep(entry) {
                    fresh
                        .models
                        .entry(name.clone())
                        .or_default()
                        .insert(*version, Arc::clone(entry));
                }
            }
        }
        Ok(fresh)
    }

    fn problem(&mut self, path: &Path, name: Option<&str>, version: Option<u64>, reason: &str) {
        tracing::warn!(path = %path.display(), reason, "skipping invalid model repository entry");
        self.problems.push(Problem {
            path: path.to_path_buf(),
            name: name.map(str::to_owned),
            version,
            reason: reason.to_owned(),
        });
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn get(&self, name: &str, version: u64) -> Option<&Arc<ModelEntry>> {
        self.models.get(name)?.get(&version)
    }

    pub fn contains_model(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    /// Valid versions of `name`, ascending.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.models
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every valid entry, by name then version.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<ModelEntry>> {
        self.models.values().flat_map(|v| v.values())
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

/// Reads one version directory (`…/<name>/<version>/`), as `contender validate` does.
pub fn read_entry(dir: &Path) -> Result<ModelEntry, String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = dir
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .ok_or("cannot tell the model name from the path (expected …/<name>/<version>/)")?
        .to_owned();
    read_entry_named(&dir, &name)
}

fn read_entry_named(dir: &Path, name: &str) -> Result<ModelEntry, String> {
    let dir_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let version: u64 = dir_name
        .parse()
        .ok()
        .filter(|&v| v > 0 && !dir_name.starts_with('0'))
        .ok_or_else(|| format!("version directory {dir_name:?} is not a positive integer"))?;
    let onnx = dir.join(Format::Onnx.file_name()).is_file();
    let pt = dir.join(Format::TorchScript.file_name()).is_file();
    let format = match (onnx, pt) {
        (true, false) => Format::Onnx,
        (false, true) => Format::TorchScript,
        (true, true) => return Err("holds both model.onnx and model.pt; keep one".into()),
        (false, false) => return Err("holds no model.onnx or model.pt".into()),
    };
    let toml_path = dir.join("model.toml");
    let metadata = if toml_path.is_file() {
        let text = std::fs::read_to_string(&toml_path).map_err(|e| format!("model.toml: {e}"))?;
        ModelMetadata::parse(&text).map_err(|e| format!("model.toml: {e}"))?
    } else {
        ModelMetadata::default()
    };
    let declared = !metadata.inputs.is_empty() || !metadata.outputs.is_empty();
    match format {
        Format::Onnx if declared => {
            return Err("model.toml declares [[inputs]]/[[outputs]], but an ONNX file carries its own signature: remove them".into());
        }
        Format::TorchScript if metadata.inputs.is_empty() || metadata.outputs.is_empty() => {
            return Err("model.pt carries no typed signature: declare [[inputs]] and [[outputs]] (name, datatype, shape) in model.toml".into());
        }
        _ => {}
    }
    Ok(ModelEntry {
        name: name.to_owned(),
        version,
        dir: dir.to_path_buf(),
        format,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_skips_invalid_entries_with_reasons() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("good/1")).unwrap();
        std::fs::write(r.join("good/1/model.onnx"), b"x").unwrap();
        std::fs::create_dir_all(r.join("good/latest")).unwrap();
        std::fs::create_dir_all(r.join("empty/2")).unwrap();
        std::fs::create_dir_all(r.join("badmeta/1")).unwrap();
        std::fs::write(r.join("badmeta/1/model.onnx"), b"x").unwrap();
        std::fs::write(r.join("badmeta/1/model.toml"), "task = 3").unwrap();
        std::fs::create_dir_all(r.join("_data")).unwrap();
        std::fs::write(r.join("README.md"), "").unwrap();

        let repo = Repository::scan(r).unwrap();
        assert_eq!(repo.versions("good"), vec![1]);
        assert!(!repo.contains_model("empty"));
        assert!(!repo.contains_model("_data"));
        let reasons: Vec<_> = repo
            .problems()
            .iter()
            .map(|p| (p.name.clone(), p.reason.clone()))
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons
                .iter()
                .any(|(n, r)| n.as_deref() == Some("good") && r.contains("\"latest\""))
        );
        assert!(
            reasons
                .iter()
                .any(|(n, r)| n.as_deref() == Some("empty") && r.contains("no model.onnx"))
        );
        assert!(
            reasons
                .iter()
                .any(|(n, r)| n.as_deref() == Some("badmeta") && r.contains("model.toml"))
        );
    }

    #[test]
    fn rescan_finds_new_versions_and_keeps_known_entries() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for v in ["1", "2"] {
            std::fs::create_dir_all(r.join("m").join(v)).unwrap();
            std::fs::write(r.join("m").join(v).join("model.onnx"), b"x").unwrap();
        }
        let repo = Repository::scan(r).unwrap();
        let known = Arc::clone(repo.get("m", 1).unwrap());
        std::fs::create_dir_all(r.join("m/7")).unwrap();
        std::fs::write(r.join("m/7/model.onnx"), b"x").unwrap();
        std::fs::create_dir_all(r.join("m/8")).unwrap();
        std::fs::remove_dir_all(r.join("m/2")).unwrap();

        let again = repo.rescan(|_| false).unwrap();
        assert_eq!(again.versions("m"), vec![1, 7]);
        assert!(Arc::ptr_eq(again.get("m", 1).unwrap(), &known));
        assert!(
            again
                .problems()
                .iter()
                .any(|p| p.version == Some(8) && p.reason.contains("no model.onnx")),
            "{:?}",
            again.problems()
        );
        // A version gone from disk stays while `keep` holds on to it.
        let kept = repo.rescan(|e| e.version == 2).unwrap();
        assert_eq!(kept.versions("m"), vec![1, 2, 7]);
    }

    #[test]
    fn unreadable_root_is_an_error() {
        assert!(Repository::scan(Path::new("/nonexistent/contender")).is_err());
    }
}
