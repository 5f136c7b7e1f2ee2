//! Every seed of the fuzz targets, and every input a fuzzing campaign found
//! crashing or hanging (`fuzz/regressions/<target>/`), replayed through the
//! same entry points `cargo fuzz` runs (`distroless_guard::fuzz`). A failure
//! here is a crash the fuzzer found, back again.

use std::path::Path;

type Target = fn(&[u8]);

/// How long one input may take before the replay calls it a hang.
const INPUT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

const TARGETS: &[(&str, Target)] = &[
    ("admission_review", distroless_guard::fuzz::admission_review),
    ("manifests", distroless_guard::fuzz::manifests),
    ("policy", distroless_guard::fuzz::policy),
    ("image_reference", distroless_guard::fuzz::image_reference),
    ("layer", distroless_guard::fuzz::layer),
    ("docker_config", distroless_guard::fuzz::docker_config),
    ("label_selector", distroless_guard::fuzz::label_selector),
];

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_has_seeds_and_its_seeds_and_regressions_replay_without_a_panic_or_a_hang() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let declared = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for (name, target) in TARGETS {
        assert!(
            declared.contains(&format!("name = \"{name}\"")),
            "{name} is not a fuzz target"
        );
        let seeds = inputs(&fuzz.join("seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name} is empty");
        let regressions = inputs(&fuzz.join("regressions").join(name));
        for input in seeds.iter().chain(&regressions) {
            let data = std::fs::read(input).unwrap();
            // On a thread of its own, so that a hang regression fails the test
            // (naming the input) instead of holding it: each input takes
            // milliseconds; the bound is far above that.
            let (done, outcome) = std::sync::mpsc::channel();
            let target = *target;
            std::thread::spawn(move || {
                let _ = done.send(std::panic::catch_unwind(|| target(&data)).is_ok());
            });
            match outcome.recv_timeout(INPUT_LIMIT) {
                Ok(true) => {}
                Ok(false) => panic!("{name} panicked on {}", input.display()),
                Err(_) => panic!("{name} did not finish {} within {INPUT_LIMIT:?}", input.display()),
            }
        }
    }
    let targets_in_toml = declared.matches("[[bin]]").count();
    assert_eq!(targets_in_toml, TARGETS.len(), "every fuzz target is replayed here");
}
