//! Where served models come from: one model file, or a model repository in Triton's layout,
//! `DIR/<name>/<version>/model.maas` with positive integer versions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The file name of a model inside a version folder.
pub const MODEL_FILE: &str = "model.maas";

/// What `maas serve` serves.
#[derive(Debug, Clone)]
pub enum Source {
    /// One model file (`--model`), served as version 1 under `name`.
    File { name: String, path: PathBuf },
    /// A model repository (`--repository`).
    Repository(PathBuf),
}

/// A model name that can stand in `/v2/models/NAME` as it is: letters, digits, `.`, `_` and `-`,
/// not `.` or `..` alone (which clients resolve away).
pub fn check_model_name(s: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty() {
        return Err("the model name is empty".into());
    }
    if !s.chars().all(allowed) {
        return Err(format!(
            "{s:?} cannot be a model name: use letters, digits, '.', '_' and '-'"
        ));
    }
    // `.` and `..` (which clients resolve away) among them: a hidden folder is not a model, so
    // the load route cannot serve one that a repository scan passes over.
    if s.starts_with('.') {
        return Err(format!(
            "{s:?} cannot be a model name: a name starting with '.' is a hidden folder, not a model"
        ));
    }
    Ok(())
}

/// The model names of a repository: its sub-folders whose names can be model names (others,
/// hidden folders included, are not models and are left alone, as Triton does).
pub fn model_names(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("model repository {}: cannot list it", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("model repository {}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if check_model_name(&name).is_ok() && entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The versions of the model `name` in the repository `dir`: each positive integer sub-folder
/// holding `model.maas`. A model folder that is gone has none. A `model.maas` that is not a
/// regular file (a FIFO, a device, a folder, a broken link) is a version all the same, so that
/// loading it names the file and what it is, rather than "no version".
pub fn model_versions(dir: &Path, name: &str) -> Result<BTreeMap<u64, PathBuf>> {
    let folder = dir.join(name);
    let mut versions = BTreeMap::new();
    if !folder.is_dir() {
        return Ok(versions);
    }
    let entries = std::fs::read_dir(&folder)
        .with_context(|| format!("{}: cannot list the model's versions", folder.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}", folder.display()))?;
        let Some(version) = entry
            .file_name()
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&v| v > 0)
        else {
            continue;
        };
        let file = entry.path().join(MODEL_FILE);
        if std::fs::symlink_metadata(&file).is_ok() {
            versions.insert(version, file);
        }
    }
    Ok(versions)
}

/// The model file of `--model PATH`: the file itself, or, for a folder (what KServe's storage
/// initializer leaves in /mnt/models), the one `.maas` file in it.
pub fn model_file(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let entries = std::fs::read_dir(path)
        .with_context(|| format!("--model {}: cannot list the folder", path.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("--model {}", path.display()))?;
        let file = entry.path();
        if file.extension().is_some_and(|e| e == "maas") && file.is_file() {
            found.push(file);
        }
    }
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "--model {}: the folder holds no .maas model file; for a model repository \
             (NAME/VERSION/model.maas) use --repository",
            path.display()
        ),
        several => bail!(
            "--model {}: the folder holds {} .maas files; name one, or lay them out as a \
             repository (NAME/VERSION/model.maas) for --repository",
            path.display(),
            several.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_positive_integer_folders_holding_a_model_file() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["1", "2", "0", "x", "03", "7"] {
            std::fs::create_dir_all(dir.path().join("m").join(v)).unwrap();
        }
        for v in ["1", "2", "0", "x", "03"] {
            std::fs::write(dir.path().join("m").join(v).join(MODEL_FILE), b"").unwrap();
        }
        std::fs::create_dir_all(dir.path().join(".hidden/1")).unwrap();
        std::fs::write(dir.path().join(".hidden/1").join(MODEL_FILE), b"").unwrap();
        let err = check_model_name(".hidden").unwrap_err();
        assert!(err.contains("hidden folder"), "{err}");
        std::fs::create_dir_all(dir.path().join("bad name/1")).unwrap();
        assert_eq!(model_names(dir.path()).unwrap(), ["m"]);
        let versions = model_versions(dir.path(), "m").unwrap();
        // 7 has no model file; 0 and x are not versions; 03 is version 3.
        assert_eq!(versions.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(model_versions(dir.path(), "gone").unwrap().is_empty());
    }

    #[test]
    fn a_model_folder_must_hold_exactly_one_model_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = model_file(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no .maas model file"), "{err}");
        std::fs::write(dir.path().join("a.maas"), b"").unwrap();
        assert_eq!(model_file(dir.path()).unwrap(), dir.path().join("a.maas"));
        std::fs::write(dir.path().join("b.maas"), b"").unwrap();
        let err = model_file(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2 .maas files"), "{err}");
    }
}
