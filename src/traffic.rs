//! Who answers a request and who sees a mirrored copy.
//!
//! Decisions are deterministic hashes (xxh3) of the deployment's seed and a
//! key, mapped to a number in [0, 1): with a routing key (a header or a
//! request parameter) canary assignment is sticky — the same user always
//! gets the same model — and without one it is keyed by the request id,
//! which is unique, so assignment is uniformly random. Shadow sampling is
//! keyed by the request id. Changing the seed reshuffles every assignment;
//! tests fix it to assert ratios.

use crate::config::ChallengerMode;

/// A number in [0, 1) from the seed, a salt and a key.
pub fn unit(seed: u64, salt: u64, key: &str) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(
        key.as_bytes(),
        seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// What one request does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The challenger (index) that answers, or `None` for the champion.
    pub answering: Option<usize>,
    /// Challengers (indexes) that get a mirrored copy.
    pub mirrored: Vec<usize>,
    /// Whether the champion gets a mirrored copy (when a canary answers).
    pub champion_mirrored: bool,
}

/// Routes one request among challengers given as `(mode, fraction)`.
pub fn route(
    challengers: &[(ChallengerMode, f64)],
    seed: u64,
    routing_key: Option<&str>,
    request_id: &str,
) -> Route {
    let mut r = Route::default();
    if challengers.is_empty() {
        return r;
    }
    let u = unit(seed, 0, routing_key.unwrap_or(request_id));
    let mut cumulative = 0.0;
    for (i, &(mode, fraction)) in challengers.iter().enumerate() {
        if mode == ChallengerMode::Canary {
            cumulative += fraction;
            if u < cumulative {
                r.answering = Some(i);
                r.champion_mirrored = true;
                break;
            }
        }
    }
    for (i, &(mode, fraction)) in challengers.iter().enumerate() {
        if r.answering == Some(i) {
            continue;
        }
        let see = match mode {
            // A canary sees every request: its slice live, the rest mirrored,
            // so it can be compared with the champion on the same traffic.
            ChallengerMode::Canary => true,
            ChallengerMode::Shadow => {
                fraction >= 1.0 || unit(seed, i as u64 + 1, request_id) < fraction
            }
        };
        if see {
            r.mirrored.push(i);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_share_is_close_to_its_fraction() {
        let challengers = [(ChallengerMode::Canary, 0.2), (ChallengerMode::Shadow, 0.5)];
        let n = 20_000;
        let (mut canary, mut shadow) = (0, 0);
        for i in 0..n {
            let r = route(&challengers, 7, None, &format!("request-{i}"));
            canary += usize::from(r.answering == Some(0));
            shadow += usize::from(r.mirrored.contains(&1));
            assert_eq!(r.champion_mirrored, r.answering.is_some());
        }
        let canary = canary as f64 / n as f64;
        let shadow = shadow as f64 / n as f64;
        assert!((canary - 0.2).abs() < 0.015, "canary share {canary}");
        assert!((shadow - 0.5).abs() < 0.015, "shadow share {shadow}");
    }

    #[test]
    fn routing_keys_are_sticky() {
        let challengers = [(ChallengerMode::Canary, 0.5)];
        for user in 0..200 {
            let key = format!("user-{user}");
            let first = route(&challengers, 1, Some(&key), "a").answering;
            for req in 0..5 {
                assert_eq!(
                    route(&challengers, 1, Some(&key), &format!("r{req}")).answering,
                    first
                );
            }
        }
    }

    #[test]
    fn the_seed_reshuffles() {
        let challengers = [(ChallengerMode::Canary, 0.5)];
        let a: Vec<_> = (0..64)
            .map(|i| route(&challengers, 1, None, &i.to_string()).answering)
            .collect();
        let b: Vec<_> = (0..64)
            .map(|i| route(&challengers, 2, None, &i.to_string()).answering)
            .collect();
        assert_ne!(a, b);
    }

    #[test]
    fn full_shadows_see_everything_and_no_challengers_route_to_the_champion() {
        let r = route(
            &[(ChallengerMode::Shadow, 1.0), (ChallengerMode::Shadow, 1.0)],
            0,
            None,
            "x",
        );
        assert_eq!(r.mirrored, vec![0, 1]);
        assert_eq!(r.answering, None);
        assert_eq!(route(&[], 0, None, "x"), Route::default());
    }
}
