//! Renders the Helm chart with the real Helm v4 engine (PyPI `helm-python-sdk`)
//! and validates the objects with `kubernetes-validate`, through
//! `tests/chart/render.py` run by a Python virtualenv.
//!
//! The virtualenv is `target/chart-venv` (created on first use from
//! `tests/chart/requirements.txt`; `.ci/run` creates it up front), or the
//! interpreter named by `DISTROLESS_GUARD_CHART_PYTHON`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    root().join("charts/distroless-guard")
}

fn has_packages(python: &Path) -> bool {
    let mut import = Command::new(python);
    import.args(["-c", "import helm_python, kubernetes_validate, jsonschema, yaml"]);
    python.with_file_name("shellcheck").exists() && crate::command::succeeds(import)
}

/// Runs a step of the virtualenv's set-up (a download of the packages may take
/// minutes; a hang fails with what it printed).
fn run(cmd: Command) {
    let shown = format!("{cmd:?}");
    let out = testcluster::process::output_within(cmd, None, std::time::Duration::from_secs(1200))
        .unwrap_or_else(|e| panic!("{e} (python3 with venv is needed for the chart tests)"));
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python interpreter with the chart test packages.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(p) = std::env::var_os("DISTROLESS_GUARD_CHART_PYTHON") {
            let p = PathBuf::from(p);
            assert!(has_packages(&p), "{} lacks the chart test packages", p.display());
            return p;
        }
        let venv = root().join("target/chart-venv");
        let python = venv.join("bin/python");
        if !has_packages(&python) {
            let mut venv_cmd = Command::new("python3");
            venv_cmd.args(["-m", "venv"]).arg(&venv);
            run(venv_cmd);
            let mut pip = Command::new(&python);
            pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(root().join("tests/chart/requirements.txt"));
            run(pip);
        }
        assert!(
            has_packages(&python),
            "the chart test virtualenv {} is incomplete",
            venv.display()
        );
        python
    })
}

/// The strings of a JSON array (empty when it is not one).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// One rendering: values, release name and namespace.
pub struct Case {
    pub values: Value,
    pub release: &'static str,
    pub namespace: &'static str,
}

impl Case {
    pub fn new(values: Value) -> Self {
        Case {
            values,
            release: "distroless-guard",
            namespace: "distroless-guard",
        }
    }
}

/// What one case rendered to.
#[derive(Debug)]
pub struct Rendered {
    pub error: Option<String>,
    pub notes: String,
    /// (template, object, validation outcome)
    pub objects: Vec<(String, Value, String)>,
}

impl Rendered {
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .map(|o| &o.1)
            .filter(|o| o["kind"] == kind)
            .collect()
    }

    pub fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "expected one {kind}, found {}", all.len());
        all[0]
    }

    pub fn kinds(&self) -> Vec<String> {
        self.objects
            .iter()
            .map(|o| o.1["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The objects as a `kind: List`, as `kubectl` and `distroless-guard check` read them.
    pub fn as_list(&self) -> Value {
        json!({"apiVersion": "v1", "kind": "List", "items": self.objects.iter().map(|o| o.1.clone()).collect::<Vec<_>>()})
    }
}

/// The answer for a set of cases, plus `helm lint --strict` of the chart and its metadata.
pub struct Answer {
    pub lint: Value,
    pub metadata: Value,
    pub cases: Vec<Rendered>,
}

/// Renders `chart` (a chart directory) for each case.
pub fn render_chart(chart: &Path, cases: &[Case]) -> Answer {
    let request = json!({
        "chart": chart,
        "crds": chart.join("crds"),
        "kubeVersion": "1.37.0",
        "cases": cases.iter().map(|c| json!({"values": c.values, "release": c.release, "namespace": c.namespace})).collect::<Vec<_>>(),
    });
    let mut render = Command::new(python());
    render.arg(root().join("tests/chart/render.py"));
    let out = crate::command::output_with_input(render, request.to_string());
    assert!(
        out.status.success(),
        "render.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases = answer["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Rendered {
            error: c["error"].as_str().map(str::to_string),
            notes: c["notes"].as_str().unwrap_or_default().to_string(),
            objects: c["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    (
                        o["template"].as_str().unwrap().to_string(),
                        o["object"].clone(),
                        o["validation"].as_str().unwrap().to_string(),
                    )
                })
                .collect(),
        })
        .collect();
    Answer {
        lint: answer["lint"].clone(),
        metadata: answer["metadata"].clone(),
        cases,
    }
}

/// The `shellcheck` binary installed beside the Python interpreter.
pub fn shellcheck() -> PathBuf {
    python().with_file_name("shellcheck")
}

/// Renders the repository's chart for each case.
pub fn render(cases: &[Case]) -> Answer {
    render_chart(&chart_dir(), cases)
}

/// Renders the repository's chart once, expecting success.
pub fn render_one(values: Value) -> Rendered {
    let mut answer = render(&[Case::new(values)]);
    let rendered = answer.cases.remove(0);
    assert_eq!(rendered.error, None, "the chart did not render");
    rendered
}
