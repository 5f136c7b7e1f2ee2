//! A real node leaves nothing behind: after its control plane stops, no mount
//! under its directory, no process naming it (kubelet, containerd, shims,
//! containers), no cgroup, no bridge, no veth and no FORWARD rule of its own.
//! Runs a control plane of its own (in this test binary's process, never
//! beside the cluster tests' one, whose kube-proxy would share the host's
//! iptables).

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use testcluster::node::real_node_placement;
use testcluster::oci::test_images;
use testcluster::{ControlPlane, Options};

fn mounts_under(dir: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(dir))
        .map(str::to_string)
        .collect()
}

fn processes_naming(dir: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(dir).then_some(cmdline)
        })
        .collect()
}

fn veths() -> usize {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_stopped_real_node_leaves_no_mount_process_cgroup_bridge_veth_or_rule() {
    let veths_before = veths();
    let cp = ControlPlane::start(Options {
        nodes: 1,
        real_nodes: 1,
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("the control plane with a real node could not start: {e}"));
    let node = cp.real_nodes().remove(0);
    let app = cp.bins().path(testcluster::bins::TEST_APP);
    let image = cp
        .push_image("teardown/app", "1", &test_images::distroless(&app).unwrap())
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pods: Api<Pod> = Api::namespaced(cp.client().await.unwrap(), "default");
        let mut spec = json!({"containers": [{"name": "app", "image": image,
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}]});
        let placement = real_node_placement();
        spec["nodeSelector"] = placement["nodeSelector"].clone();
        spec["tolerations"] = placement["tolerations"].clone();
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "app"}, "spec": spec})).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let started = Instant::now();
        loop {
            let p = pods.get("app").await.unwrap();
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the pod did not run: {:?}",
                p.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let dir = node.dir().display().to_string();
    // Proof the node had something to clean: mounts, a shim, a veth.
    assert!(!mounts_under(&dir).is_empty(), "no mounts under {dir} while a pod runs");
    assert!(
        processes_naming(&dir)
            .iter()
            .any(|c| c.contains("containerd-shim-runc-v2")),
        "no shim while a pod runs"
    );
    assert!(veths() > veths_before, "no veth while a pod runs");

    cp.stop();

    assert_eq!(mounts_under(&dir), Vec::<String>::new(), "mounts left");
    assert_eq!(processes_naming(&dir), Vec::<String>::new(), "processes left");
    assert_eq!(veths(), veths_before, "veths left");
    let bridge = Command::new("ip")
        .args(["link", "show", &node.footprint.bridge])
        .output()
        .unwrap();
    assert!(!bridge.status.success(), "bridge {} left", node.footprint.bridge);
    let rules = Command::new("iptables").args(["-w", "-S", "FORWARD"]).output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains(&node.footprint.bridge), "FORWARD rule left: {rules}");
    for h in ["memory", "pids", "cpu"] {
        let cgroup = format!("/sys/fs/cgroup/{h}{}", node.footprint.cgroup_root);
        assert!(!std::path::Path::new(&cgroup).exists(), "cgroup {cgroup} left");
    }
    assert!(!node.dir().exists(), "{dir} left");
}
