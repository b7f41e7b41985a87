//! Configuration behaviour users rely on, through the public `Config` API.

use std::path::Path;

use contender::Config;

/// Lowering `max_batch_size` alone (globally or for one model) is a complete,
/// valid configuration: nothing inherited from the defaults may exceed it.
#[test]
fn a_small_max_batch_size_alone_is_valid() {
    for text in [
        "[runtime]\nmax_batch_size = 1\n",
        "[runtime]\nmax_batch_size = 3\n",
        "[models.breast_cancer]\nmax_batch_size = 3\n",
    ] {
        let config = Config::from_toml(text, Path::new("/srv"));
        assert!(
            config.is_ok(),
            "{text:?} is rejected: {}",
            config.unwrap_err()
        );
    }
}

/// Errors name the key at fault, with its full path.
#[test]
fn errors_name_the_full_key() {
    for (text, key) in [
        ("[server]\nhttp_addr = \"nope\"\n", "server.http_addr"),
        ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes"),
        ("[runtime]\nqueue_capacity = 0\n", "runtime.queue_capacity"),
        // Wrong types and values of [runtime] keys name the key, not just
        // the section.
        ("[runtime]\nexecution = \"fast\"\n", "runtime.execution"),
        ("[runtime]\nqueue_capacity = -1\n", "runtime.queue_capacity"),
        (
            "[runtime]\nmax_batch_size = \"big\"\n",
            "runtime.max_batch_size",
        ),
        (
            "[runtime]\ninline_budget_us = \"x\"\n",
            "runtime.inline_budget_us",
        ),
        (
            "[runtime]\nwarmup_batch_sizes = 4\n",
            "runtime.warmup_batch_sizes",
        ),
        ("[models.m]\ninstances = 0\n", "models.m.instances"),
        (
            "[deployments.d.champion]\nmodel = \"m\"\nversion = 0\n",
            "deployments.d.champion.version",
        ),
        (
            "[deployments.d.champion]\nmodel = \"../m\"\nversion = 1\n",
            "deployments.d.champion.model",
        ),
    ] {
        let err = Config::from_toml(text, Path::new("/srv"))
            .expect_err(&format!("{text:?} should be rejected"));
        assert_eq!(err.key, key, "{text:?}: {err}");
        assert!(err.to_string().contains(key), "{err}");
    }
}
