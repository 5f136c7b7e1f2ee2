//! The checked-in CRD must be exactly what the Rust types generate.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let crds = distroless_guard::api::crds().unwrap();
    assert_eq!(crds.len(), 2);
    for (file, generated) in crds {
        let path = dir.join(&file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            on_disk == generated,
            "crds/{file} is out of date with src/api; regenerate the CRDs with:\n  cargo xtask crds"
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "distrolessguard.dev_distrolesspolicies.yaml",
            "distrolessguard.dev_distrolessrollouts.yaml",
            "wgpolicyk8s.io_clusterpolicyreports.yaml",
            "wgpolicyk8s.io_policyreports.yaml"
        ],
        "crds/ holds the generated CRDs and the PolicyReport ones"
    );
    for (file, kind, scope) in [
        ("wgpolicyk8s.io_policyreports.yaml", "PolicyReport", "Namespaced"),
        (
            "wgpolicyk8s.io_clusterpolicyreports.yaml",
            "ClusterPolicyReport",
            "Cluster",
        ),
    ] {
        let crd: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        assert_eq!(
            (crd["spec"]["group"].as_str(), crd["spec"]["names"]["kind"].as_str()),
            (Some("wgpolicyk8s.io"), Some(kind))
        );
        assert_eq!(crd["spec"]["scope"], scope);
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha2");
        let result = &v["schema"]["openAPIV3Schema"]["properties"]["results"]["items"]["properties"];
        for field in [
            "policy",
            "rule",
            "result",
            "severity",
            "message",
            "properties",
            "resources",
            "timestamp",
            "source",
        ] {
            assert!(result.get(field).is_some(), "{file}: results[].{field}");
        }
    }
}

#[test]
fn crd_is_cluster_scoped_with_short_name_and_rule_id_validation() {
    let crd: serde_json::Value = serde_saphyr::from_str(&distroless_guard::api::crds().unwrap()[0].1).unwrap();
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "dpol");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let rule = spec["rules"]["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
    for id in distroless_guard::api::RuleId::ALL {
        assert!(rule.contains(&format!("'{id}'")), "CEL rule misses {id}");
    }
    assert_eq!(
        spec["rules"]["additionalProperties"]["enum"],
        serde_json::json!(["Deny", "Warn", "Audit", "Ignore"])
    );
    let exemption = &spec["exemptions"]["items"];
    assert_eq!(exemption["required"], serde_json::json!(["reason"]));
    assert!(
        exemption["properties"]["reason"]["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("size() > 0")
    );
    assert_eq!(
        exemption["properties"]["rules"]["items"]["enum"]
            .as_array()
            .unwrap()
            .len(),
        9
    );
    assert_eq!(spec["action"]["enum"], serde_json::json!(["Audit", "Warn", "Deny"]));
}

#[test]
fn example_policies_are_valid_distrolesspolicies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let set = distroless_guard::manifest::load_policies(&[dir]).unwrap();
    assert!(set.get("audit").is_some() && set.get("enforce").is_some());
    let audit = set.get("audit").unwrap();
    assert_eq!(audit.spec.action, distroless_guard::api::Action::Audit);
    assert_eq!(audit.spec.match_.exclude_namespaces, ["kube-system"]);
}
