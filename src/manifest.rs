//! Reading manifests: files, directories (recursively), or stdin; multi-document
//! YAML, JSON and `kind: List`. Parse errors name the file and the line.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One object read from a manifest.
#[derive(Clone, Debug)]
pub struct Document {
    /// The file it came from (`-` for stdin).
    pub source: String,
    /// The 1-based line its YAML document starts on.
    pub line: usize,
    pub value: Value,
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or_default()
    }

    pub fn location(&self) -> String {
        format!("{}:{}", self.source, self.line)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse { path: String, line: usize, message: String },
}

fn is_manifest_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Expands directories into the manifest files below them, in a stable order.
fn expand(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path)
        .map_err(io_error(path))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error(path))?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            expand(&entry, out)?;
        } else if is_manifest_file(&entry) {
            out.push(entry);
        }
    }
    Ok(())
}

/// Reads every document from the given paths (`-` is stdin).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(io_error(path))?;
            docs.extend(parse("-", &text)?);
            continue;
        }
        let mut files = Vec::new();
        expand(path, &mut files)?;
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(io_error(&file))?;
            docs.extend(parse(&file.display().to_string(), &text)?);
        }
    }
    Ok(docs)
}

/// Splits YAML text into documents at `---` lines, remembering where each starts.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_separator || line == "..." {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 1;
            // `--- {inline}` keeps its content on the separator line.
            if let Some(rest) = line.strip_prefix("---").filter(|r| !r.trim().is_empty()) {
                current.push_str(rest);
            }
            current.push('\n');
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

/// Parses one file's text into documents. `kind: List` is flattened.
pub fn parse(source: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    for (start, body) in split_documents(text) {
        // Where the object itself starts: past leading blank and comment lines.
        let Some(skipped) = body.lines().position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        }) else {
            continue;
        };
        let value: Value = serde_saphyr::from_str(&body).map_err(|e| ManifestError::Parse {
            path: source.to_string(),
            line: start
                + e.location()
                    .map_or(skipped, |l| usize::try_from(l.line()).unwrap_or(0).saturating_sub(1)),
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            return Err(ManifestError::Parse {
                path: source.to_string(),
                line: start + skipped,
                message: "a manifest document must be a mapping with apiVersion and kind".into(),
            });
        }
        let is_list = value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k == "List" || k.ends_with("List"))
            && value.get("items").is_some_and(Value::is_array);
        if is_list {
            if let Some(Value::Array(items)) = value.get("items") {
                docs.extend(items.iter().map(|item| Document {
                    source: source.to_string(),
                    line: start + skipped,
                    value: item.clone(),
                }));
            }
        } else {
            docs.push(Document {
                source: source.to_string(),
                line: start + skipped,
                value,
            });
        }
    }
    Ok(docs)
}

/// Why policy files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{location}: not a valid DistrolessPolicy: {source}")]
    Invalid {
        location: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no DistrolessPolicy found in {0}")]
    None(String),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

/// Loads DistrolessPolicy objects from files; the built-in default when none are given.
pub fn load_policies(paths: &[PathBuf]) -> Result<crate::policy::PolicySet, PolicyFileError> {
    if paths.is_empty() {
        return Ok(crate::policy::PolicySet::builtin_default());
    }
    let docs = load(paths)?;
    let policies = docs
        .iter()
        .filter(|d| d.kind() == "DistrolessPolicy")
        .map(|d| {
            serde_json::from_value::<crate::api::DistrolessPolicy>(d.value.clone()).map_err(|source| {
                PolicyFileError::Invalid {
                    location: d.location(),
                    source,
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if policies.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(PolicyFileError::None(names.join(", ")));
    }
    Ok(crate::policy::PolicySet::new(&policies)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_split_and_keep_their_start_lines() {
        let text =
            "# leading comment\napiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Service\n---\n# only a comment\n";
        let docs = parse("x.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].line, docs[0].kind()), (2, "Pod"));
        assert_eq!((docs[1].line, docs[1].kind()), (5, "Service"));
    }

    #[test]
    fn lists_are_flattened() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod}\n- {apiVersion: apps/v1, kind: Deployment}\n";
        let kinds: Vec<String> = parse("l.yaml", text)
            .unwrap()
            .iter()
            .map(|d| d.kind().to_string())
            .collect();
        assert_eq!(kinds, ["Pod", "Deployment"]);
    }

    #[test]
    fn parse_errors_name_the_file_and_the_line_in_the_file() {
        let text = "apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n";
        let err = parse("bad.yaml", text).unwrap_err().to_string();
        assert!(err.starts_with("bad.yaml:"), "{err}");
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        assert!((7..=8).contains(&line), "{err}");
    }

    #[test]
    fn json_files_parse_too() {
        let docs = parse(
            "p.json",
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}"#,
        )
        .unwrap();
        assert_eq!(docs[0].kind(), "Pod");
    }

    #[test]
    fn scalars_are_not_manifests() {
        assert!(parse("s.yaml", "just a string\n").is_err());
    }
}
