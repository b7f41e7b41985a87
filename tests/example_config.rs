//! The repository's example `contender.toml` stays valid: it parses, and
//! every deployment's champion is a model version of the example repository.

use std::path::PathBuf;

use contender::Config;
use contender::deployment::Gateway;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contender.toml")
}

#[test]
fn example_config_parses() {
    let config = Config::load(Some(&example()))
        .unwrap_or_else(|e| panic!("{} does not load: {e}", example().display()));
    assert_eq!(
        config.repository.path,
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"),
        "the repository path is relative to the config file"
    );
    assert!(
        !config.deployments.is_empty(),
        "the example declares deployments"
    );
    assert!(config.server.max_body_bytes > 0);
}

#[test]
fn example_champions_exist() {
    let mut config = Config::load(Some(&example())).expect("the example config loads");
    // Keep the store of this check out of the repository's `data/`.
    let data = tempfile::tempdir().expect("a temporary data directory");
    config.store.data_dir = data.path().to_path_buf();
    let deployments: Vec<(String, String, u64)> = config
        .deployments
        .iter()
        .map(|(name, d)| (name.clone(), d.champion.model.clone(), d.champion.version))
        .collect();
    let gateway = Gateway::new(config)
        .unwrap_or_else(|e| panic!("the example config does not match models/: {e}"));
    for (name, model, version) in deployments {
        assert!(
            gateway.deployment(&name).is_some(),
            "deployment {name} is missing"
        );
        assert!(
            gateway.repository().get(&model, version).is_some(),
            "deployment {name}: champion {model}@{version} is not in models/"
        );
    }
}
