//! Who answers a request and who sees a mirrored copy.
//!
//! Decisions are deterministic hashes (xxh3) of the deployment's seed and a
//! key, mapped to a number in [0, 1): with a routing key (a header or a
//! request parameter) canary assignment is sticky — the same user always
//! gets the same model — and without one it is keyed by the request id,
//! which is unique, so assignment is uniformly random. Shadow sampling is
//! keyed by the request id. Changing the seed reshuffles every assignment;
//! tests fix it to assert ratios.
//!
//! Each canary owns a **slice** of [0, 1) — intervals whose widths add up to
//! its fraction — and answers the requests whose number falls in it. A slice
//! is given when the canary joins (the lowest free space, see
//! [`assign_slices`]) and kept, stored with the challenger's settings, for
//! as long as the canary stays: adding or removing other challengers, or
//! changing another canary's fraction, never moves a canary's users.
//! Numbers in no slice go to the champion.

use crate::config::{ChallengerConfig, ChallengerMode};

/// A number in [0, 1) from the seed, a salt and a key.
pub fn unit(seed: u64, salt: u64, key: &str) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(
        key.as_bytes(),
        seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Widths below this are rounding noise, not traffic.
const EPS: f64 = 1e-12;

/// The traffic a slice covers.
pub fn width(slice: &[[f64; 2]]) -> f64 {
    slice.iter().map(|[a, b]| b - a).sum()
}

/// Sorted, clipped to [0, 1], empty intervals dropped, touching ones merged.
fn normalise(intervals: impl IntoIterator<Item = [f64; 2]>) -> Vec<[f64; 2]> {
    let mut v: Vec<[f64; 2]> = intervals
        .into_iter()
        .filter(|[a, b]| a.is_finite() && b.is_finite())
        .map(|[a, b]| [a.max(0.0), b.min(1.0)])
        .filter(|[a, b]| b - a > EPS)
        .collect();
    v.sort_by(|x, y| x[0].total_cmp(&y[0]));
    let mut out: Vec<[f64; 2]> = Vec::with_capacity(v.len());
    for [a, b] in v {
        match out.last_mut() {
            Some(last) if a <= last[1] + EPS => last[1] = last[1].max(b),
            _ => out.push([a, b]),
        }
    }
    out
}

/// `own` without what `taken` (normalised) covers.
fn subtract(own: &[[f64; 2]], taken: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let mut out = Vec::new();
    for &[mut a, b] in own {
        for &[ta, tb] in taken {
            if tb <= a || ta >= b {
                continue;
            }
            if ta > a {
                out.push([a, ta]);
            }
            a = a.max(tb);
            if a >= b {
                break;
            }
        }
        if a < b {
            out.push([a, b]);
        }
    }
    normalise(out)
}

/// [0, 1) without `taken` (normalised).
fn free(taken: &[[f64; 2]]) -> Vec<[f64; 2]> {
    subtract(&[[0.0, 1.0]], taken)
}

/// Gives every canary a slice of exactly its fraction and clears shadows'.
///
/// A canary keeps the slice it holds (less any part an earlier-listed
/// canary holds, which only a hand-edited slice can cause); one whose
/// fraction shrank gives up the top of its slice; then, in list order,
/// each canary short of its fraction — a new one, or one whose fraction
/// grew — takes the lowest free space, in several intervals if no single
/// gap is wide enough. So a change moves only the users of the canary that
/// changed, and a layout assigned from scratch is the canaries' fractions
/// laid end to end in list order (how routing worked before slices, so a
/// state stored before them keeps its users).
pub fn assign_slices(challengers: &mut [ChallengerConfig]) {
    let mut taken: Vec<[f64; 2]> = Vec::new();
    for c in challengers.iter_mut() {
        if c.mode != ChallengerMode::Canary {
            c.slice.clear();
            continue;
        }
        let mut own = subtract(&normalise(c.slice.iter().copied()), &taken);
        let mut excess = width(&own) - c.fraction;
        while excess > EPS {
            let Some(last) = own.last_mut() else { break };
            let w = last[1] - last[0];
            if w <= excess + EPS {
                own.pop();
                excess -= w;
            } else {
                last[1] -= excess;
                excess = 0.0;
            }
        }
        taken = normalise(taken.iter().chain(&own).copied());
        c.slice = own;
    }
    for c in challengers
        .iter_mut()
        .filter(|c| c.mode == ChallengerMode::Canary)
    {
        let mut need = c.fraction - width(&c.slice);
        if need <= EPS {
            continue;
        }
        let mut got = Vec::new();
        for [a, b] in free(&taken) {
            if need <= EPS {
                break;
            }
            let end = if b - a <= need { b } else { a + need };
            need -= end - a;
            got.push([a, end]);
        }
        taken = normalise(taken.iter().chain(&got).copied());
        c.slice = normalise(c.slice.iter().chain(&got).copied());
    }
}

/// Checks one challenger's slice on its own: intervals within [0, 1), and
/// for a canary, widths adding up to its fraction (an empty slice is one
/// not given yet).
pub fn check_slice(c: &ChallengerConfig) -> Result<(), String> {
    if c.slice.is_empty() {
        return Ok(());
    }
    if c.mode != ChallengerMode::Canary {
        return Err("only a canary answers a slice of the traffic".into());
    }
    for &[a, b] in &c.slice {
        if !(a.is_finite() && b.is_finite() && 0.0 <= a && a < b && b <= 1.0) {
            return Err(format!("[{a}, {b}) is not an interval within [0, 1)"));
        }
    }
    let w = width(&c.slice);
    if (w - c.fraction).abs() > 1e-9 {
        return Err(format!(
            "its intervals cover {w} of the traffic, not its fraction {}",
            c.fraction
        ));
    }
    Ok(())
}

/// Checks that no two canaries' slices (nor one canary's intervals) overlap.
pub fn check_overlaps(challengers: &[ChallengerConfig]) -> Result<(), String> {
    let mut all: Vec<(f64, f64, String)> = challengers
        .iter()
        .filter(|c| c.mode == ChallengerMode::Canary)
        .flat_map(|c| {
            c.slice
                .iter()
                .map(move |&[a, b]| (a, b, c.model_ref().to_string()))
        })
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    for w in all.windows(2) {
        if w[1].0 < w[0].1 - 1e-9 {
            return Err(format!(
                "the slices of {} and {} overlap ([{}, {}) and [{}, {}))",
                w[0].2, w[1].2, w[0].0, w[0].1, w[1].0, w[1].1
            ));
        }
    }
    Ok(())
}

/// How one challenger takes traffic, for [`route`].
#[derive(Clone, Debug, PartialEq)]
pub struct Lane {
    pub mode: ChallengerMode,
    /// Shadow: the share of requests mirrored to it.
    pub fraction: f64,
    /// Canary: the numbers it answers (see [`assign_slices`]).
    pub slice: Vec<[f64; 2]>,
}

impl Lane {
    pub fn of(c: &ChallengerConfig) -> Lane {
        Lane {
            mode: c.mode,
            fraction: c.fraction,
            slice: c.slice.clone(),
        }
    }
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

/// Routes one request among challengers.
pub fn route(
    challengers: &[Lane],
    seed: u64,
    routing_key: Option<&str>,
    request_id: &str,
) -> Route {
    let mut r = Route::default();
    if challengers.is_empty() {
        return r;
    }
    let u = unit(seed, 0, routing_key.unwrap_or(request_id));
    r.answering = challengers.iter().position(|l| {
        l.mode == ChallengerMode::Canary && l.slice.iter().any(|&[a, b]| a <= u && u < b)
    });
    r.champion_mirrored = r.answering.is_some();
    for (i, lane) in challengers.iter().enumerate() {
        if r.answering == Some(i) {
            continue;
        }
        let see = match lane.mode {
            // A canary sees every request: its slice live, the rest mirrored,
            // so it can be compared with the champion on the same traffic.
            ChallengerMode::Canary => true,
            ChallengerMode::Shadow => {
                lane.fraction >= 1.0 || unit(seed, i as u64 + 1, request_id) < lane.fraction
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

    fn challenger(version: u64, mode: ChallengerMode, fraction: f64) -> ChallengerConfig {
        ChallengerConfig {
            model: "m".into(),
            version,
            mode,
            fraction,
            workers: 1,
            queue_capacity: 64,
            timeout_ms: 1000,
            low_priority: true,
            slice: Vec::new(),
        }
    }

    fn canary(version: u64, fraction: f64) -> ChallengerConfig {
        challenger(version, ChallengerMode::Canary, fraction)
    }

    fn lanes(cs: &[ChallengerConfig]) -> Vec<Lane> {
        cs.iter().map(Lane::of).collect()
    }

    /// Which challenger version answers each of `n` routing keys.
    fn answers(cs: &[ChallengerConfig], n: usize) -> Vec<Option<u64>> {
        let l = lanes(cs);
        (0..n)
            .map(|k| {
                route(&l, 7, Some(&format!("user-{k}")), "r")
                    .answering
                    .map(|i| cs[i].version)
            })
            .collect()
    }

    fn assert_valid(cs: &[ChallengerConfig]) {
        for c in cs {
            check_slice(c).unwrap_or_else(|e| panic!("{}: {e}", c.model_ref()));
        }
        check_overlaps(cs).expect("disjoint slices");
    }

    #[test]
    fn canary_share_is_close_to_its_fraction() {
        let mut cs = [canary(2, 0.2), challenger(3, ChallengerMode::Shadow, 0.5)];
        assign_slices(&mut cs);
        let l = lanes(&cs);
        let n = 20_000;
        let (mut canary, mut shadow) = (0, 0);
        for i in 0..n {
            let r = route(&l, 7, None, &format!("request-{i}"));
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
        let mut cs = [canary(2, 0.5)];
        assign_slices(&mut cs);
        let l = lanes(&cs);
        for user in 0..200 {
            let key = format!("user-{user}");
            let first = route(&l, 1, Some(&key), "a").answering;
            for req in 0..5 {
                assert_eq!(
                    route(&l, 1, Some(&key), &format!("r{req}")).answering,
                    first
                );
            }
        }
    }

    #[test]
    fn the_seed_reshuffles() {
        let mut cs = [canary(2, 0.5)];
        assign_slices(&mut cs);
        let l = lanes(&cs);
        let a: Vec<_> = (0..64)
            .map(|i| route(&l, 1, None, &i.to_string()).answering)
            .collect();
        let b: Vec<_> = (0..64)
            .map(|i| route(&l, 2, None, &i.to_string()).answering)
            .collect();
        assert_ne!(a, b);
    }

    #[test]
    fn full_shadows_see_everything_and_no_challengers_route_to_the_champion() {
        let cs = [
            challenger(2, ChallengerMode::Shadow, 1.0),
            challenger(3, ChallengerMode::Shadow, 1.0),
        ];
        let r = route(&lanes(&cs), 0, None, "x");
        assert_eq!(r.mirrored, vec![0, 1]);
        assert_eq!(r.answering, None);
        assert_eq!(route(&[], 0, None, "x"), Route::default());
    }

    #[test]
    fn a_fresh_layout_is_the_fractions_end_to_end_in_list_order() {
        let mut cs = vec![
            canary(3, 0.3),
            challenger(5, ChallengerMode::Shadow, 1.0),
            canary(4, 0.2),
        ];
        assign_slices(&mut cs);
        assert_valid(&cs);
        assert_eq!(cs[0].slice, vec![[0.0, 0.3]]);
        assert!(cs[1].slice.is_empty());
        assert_eq!(cs[2].slice, vec![[0.3, 0.3 + 0.2]]);
        // Assigning again changes nothing.
        let again = {
            let mut c = cs.clone();
            assign_slices(&mut c);
            c
        };
        assert_eq!(again, cs);
    }

    #[test]
    fn removing_or_adding_a_challenger_moves_no_other_canarys_users() {
        let mut cs = vec![canary(3, 0.3), canary(4, 0.2)];
        assign_slices(&mut cs);
        let before = answers(&cs, 5000);
        // v3 leaves: every v4 user stays on v4, and v4 gets no one new.
        cs.remove(0);
        assign_slices(&mut cs);
        assert_valid(&cs);
        let after = answers(&cs, 5000);
        for (k, (b, a)) in before.iter().zip(&after).enumerate() {
            assert_eq!(*b == Some(4), *a == Some(4), "user-{k}: {b:?} → {a:?}");
        }
        // A new canary and a shadow join: v4's users still stay.
        cs.insert(0, challenger(6, ChallengerMode::Shadow, 0.5));
        cs.push(canary(5, 0.4));
        assign_slices(&mut cs);
        assert_valid(&cs);
        let later = answers(&cs, 5000);
        for (k, (b, a)) in before.iter().zip(&later).enumerate() {
            assert_eq!(*b == Some(4), *a == Some(4), "user-{k}: {b:?} → {a:?}");
        }
        // The newcomer took the lowest free space: v3's old slice first.
        assert_eq!(cs[2].slice[0][0], 0.0, "{:?}", cs[2].slice);
    }

    #[test]
    fn a_canarys_fraction_change_moves_only_its_own_users() {
        let mut cs = vec![canary(3, 0.3), canary(4, 0.2), canary(5, 0.1)];
        assign_slices(&mut cs);
        let before = answers(&cs, 5000);
        cs[1].fraction = 0.35;
        assign_slices(&mut cs);
        assert_valid(&cs);
        assert!((width(&cs[1].slice) - 0.35).abs() < 1e-12);
        let grown = answers(&cs, 5000);
        for (k, (b, a)) in before.iter().zip(&grown).enumerate() {
            if b != a {
                assert!(
                    *b == Some(4) || *a == Some(4),
                    "user-{k} moved {b:?} → {a:?}"
                );
            }
            // A grown canary keeps every user it had.
            assert!(*b != Some(4) || *a == Some(4), "user-{k} left v4");
        }
        cs[1].fraction = 0.05;
        assign_slices(&mut cs);
        assert_valid(&cs);
        let shrunk = answers(&cs, 5000);
        for (k, (b, a)) in grown.iter().zip(&shrunk).enumerate() {
            if b != a {
                assert_eq!((*b, *a), (Some(4), None), "user-{k}");
            }
        }
    }

    #[test]
    fn shares_stay_exact_when_free_space_is_fragmented() {
        let mut cs = vec![canary(2, 0.3), canary(3, 0.3), canary(4, 0.3)];
        assign_slices(&mut cs);
        cs.remove(1);
        cs.push(canary(5, 0.4));
        assign_slices(&mut cs);
        assert_valid(&cs);
        assert_eq!(cs[0].slice, vec![[0.0, 0.3]]);
        assert_eq!(cs[1].slice, vec![[0.6, 0.6 + 0.3]]);
        assert!(
            (width(&cs[2].slice) - 0.4).abs() < 1e-12,
            "{:?}",
            cs[2].slice
        );
        assert_eq!(cs[2].slice.len(), 2, "{:?}", cs[2].slice);
        // Measured: each canary answers its fraction.
        let l = lanes(&cs);
        let n = 40_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            if let Some(a) = route(&l, 3, None, &format!("q{i}")).answering {
                counts[a] += 1;
            }
        }
        for (i, want) in [0.3, 0.3, 0.4].into_iter().enumerate() {
            let share = counts[i] as f64 / n as f64;
            assert!((share - want).abs() < 0.012, "canary {i}: {share}");
        }
    }

    #[test]
    fn overlapping_or_mis_sized_slices_are_refused() {
        let mut a = canary(2, 0.3);
        a.slice = vec![[0.0, 0.3]];
        let mut b = canary(3, 0.3);
        b.slice = vec![[0.2, 0.5]];
        assert!(check_overlaps(&[a.clone(), b.clone()]).is_err());
        b.slice = vec![[0.3, 0.5]];
        assert!(check_slice(&b).is_err(), "0.2 wide for a 0.3 canary");
        b.slice = vec![[0.3, 0.6]];
        assert!(check_slice(&b).is_ok());
        assert!(check_overlaps(&[a, b]).is_ok());
        let mut s = challenger(4, ChallengerMode::Shadow, 1.0);
        s.slice = vec![[0.0, 1.0]];
        assert!(check_slice(&s).is_err());
    }
}
