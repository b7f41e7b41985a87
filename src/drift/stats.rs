//! Drift statistics: pure functions comparing live data with the reference
//! statistics of a model version (see [`super::reference`]), and the default
//! thresholds that decide when a score means drift.
//!
//! | statistic | function | input | drift when | default |
//! |---|---|---|---|---|
//! | Population Stability Index | [`psi`] | reference bin fractions, live bin counts | `psi ≥ psi_warn` (warn), `≥ psi_alert` (alert) | 0.1 / 0.25 |
//! | two-sample Kolmogorov–Smirnov | [`ks_2samp`] | reference sample, live values | `p < ks_p` | 0.05 |
//! | Pearson chi-square goodness of fit | [`chi_square`] | reference bin/category fractions, live counts | `p < chi2_p` | 0.05 |
//! | Jensen–Shannon distance (base 2) | [`jensen_shannon`] | two distributions over the same bins | `js ≥ js` | 0.1 |
//! | normalised Wasserstein-1 distance | [`wasserstein_normalised`] | reference sample, live values, reference std | `w ≥ wasserstein` | 0.1 |
//!
//! Every function returns `None` (never panics) for inputs on which the
//! statistic is undefined: empty inputs, mismatched lengths, NaN, negative or
//! non-finite fractions. Live values must be binned with [`histogram`], which
//! is the bin definition `models/generate.py` uses for the reference fractions.
//!
//! The values are checked in the unit tests against NumPy/SciPy 1.17 (the
//! versions pinned by `models/generate.py`); each test quotes the Python that
//! produced its expected numbers.
//!
//! A caveat on fixed thresholds: under no drift, PSI over `B` bins is
//! approximately `(1/n_ref + 1/n_live) · χ²(B − 1)`, so with 10 bins a live
//! window of 100 rows already has a mean PSI near 0.09. Use windows of several
//! hundred rows for PSI and the distances; the p-value tests account for the
//! sample size themselves.

use serde::{Deserialize, Serialize};

/// Replacement for an empty bin's fraction in [`psi`] (and, renormalised, in
/// [`chi_square`]'s expected frequencies): `1e-4`, the value Evidently's
/// `get_binned_data` substitutes for zero percentages and a common choice in
/// credit-scoring practice. Without it an empty bin makes PSI infinite.
pub const EMPTY_BIN_EPSILON: f64 = 1e-4;

/// Reference fractions must sum to 1 within this tolerance.
pub const FRACTION_SUM_TOLERANCE: f64 = 1e-6;

/// PSI at or above which a shift is "moderate" and worth a warning (Siddiqi
/// 2006, *Credit Risk Scorecards*, Wiley, ch. 8: < 0.1 no significant change,
/// 0.1–0.25 some change, > 0.25 significant shift). Also Evidently's default
/// PSI threshold.
pub const PSI_WARN: f64 = 0.1;
/// PSI at or above which a shift is "significant" (Siddiqi 2006, see
/// [`PSI_WARN`]).
pub const PSI_ALERT: f64 = 0.25;
/// Significance level of the two-sample Kolmogorov–Smirnov test: drift when
/// `p < 0.05` (the conventional 5 % level; Evidently's default for `ks`).
pub const KS_P: f64 = 0.05;
/// Significance level of the chi-square goodness-of-fit test: drift when
/// `p < 0.05` (conventional 5 % level; Evidently's default for `chisquare`).
pub const CHI2_P: f64 = 0.05;
/// Jensen–Shannon distance at or above which the distributions count as
/// drifted. 0.1 is the default of Evidently's `jensenshannon` test (which
/// compares with `≥`). Note that Evidently computes the distance with natural
/// logarithms while [`jensen_shannon`] uses base 2, which is larger by a
/// factor `1/√ln 2 ≈ 1.20`: 0.1 here equals 0.083 in Evidently's units, i.e.
/// slightly stricter.
pub const JS_DISTANCE: f64 = 0.1;
/// Wasserstein-1 distance divided by the reference standard deviation at or
/// above which a numeric feature counts as drifted: 0.1 (a mean shift of a
/// tenth of a standard deviation moves the distance by exactly 0.1), the
/// default of Evidently's `wasserstein` ("Wasserstein distance (normed)")
/// test, which also compares with `≥`.
pub const WASSERSTEIN_NORMALISED: f64 = 0.1;

/// Drift thresholds, deserialisable from configuration (snake_case keys;
/// every key optional, defaulting to the constants above).
///
/// ```toml
/// psi_warn = 0.1      # Siddiqi (2006)
/// psi_alert = 0.25    # Siddiqi (2006)
/// ks_p = 0.05         # significance level
/// chi2_p = 0.05       # significance level
/// js = 0.1            # Evidently default (natural log there, base 2 here)
/// wasserstein = 0.1   # Evidently default, distance / reference std
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct Thresholds {
    /// PSI warning level, see [`PSI_WARN`] (Siddiqi 2006).
    pub psi_warn: f64,
    /// PSI alert level, see [`PSI_ALERT`] (Siddiqi 2006).
    pub psi_alert: f64,
    /// KS significance level: drift when `p < ks_p`, see [`KS_P`].
    pub ks_p: f64,
    /// Chi-square significance level: drift when `p < chi2_p`, see [`CHI2_P`].
    pub chi2_p: f64,
    /// Jensen–Shannon distance (base 2) threshold, see [`JS_DISTANCE`]
    /// (Evidently's default).
    pub js: f64,
    /// Normalised Wasserstein threshold, see [`WASSERSTEIN_NORMALISED`]
    /// (Evidently's default).
    pub wasserstein: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            psi_warn: PSI_WARN,
            psi_alert: PSI_ALERT,
            ks_p: KS_P,
            chi2_p: CHI2_P,
            js: JS_DISTANCE,
            wasserstein: WASSERSTEIN_NORMALISED,
        }
    }
}

/// How far a PSI value is from the reference, by [`Thresholds::psi_level`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftLevel {
    /// Below the warning level.
    None,
    /// At or above the warning level, below the alert level.
    Warn,
    /// At or above the alert level.
    Alert,
}

impl Thresholds {
    /// Checks that the thresholds make sense: all finite, PSI levels
    /// non-negative with `psi_warn ≤ psi_alert`, significance levels in
    /// (0, 1), distances positive.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("psi_warn", self.psi_warn),
            ("psi_alert", self.psi_alert),
            ("ks_p", self.ks_p),
            ("chi2_p", self.chi2_p),
            ("js", self.js),
            ("wasserstein", self.wasserstein),
        ];
        if let Some((name, v)) = all.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("drift threshold `{name}` must be finite, not {v}"));
        }
        if self.psi_warn < 0.0 || self.psi_alert < self.psi_warn {
            return Err(format!(
                "drift thresholds need 0 ≤ psi_warn ≤ psi_alert (got {} and {})",
                self.psi_warn, self.psi_alert
            ));
        }
        for (name, p) in [("ks_p", self.ks_p), ("chi2_p", self.chi2_p)] {
            if !(p > 0.0 && p < 1.0) {
                return Err(format!(
                    "drift threshold `{name}` must be in (0, 1), not {p}"
                ));
            }
        }
        for (name, d) in [("js", self.js), ("wasserstein", self.wasserstein)] {
            if d <= 0.0 {
                return Err(format!(
                    "drift threshold `{name}` must be positive, not {d}"
                ));
            }
        }
        Ok(())
    }

    /// `Alert` if `psi ≥ psi_alert`, `Warn` if `psi ≥ psi_warn`, else `None`
    /// (also for NaN).
    pub fn psi_level(&self, psi: f64) -> DriftLevel {
        if psi >= self.psi_alert {
            DriftLevel::Alert
        } else if psi >= self.psi_warn {
            DriftLevel::Warn
        } else {
            DriftLevel::None
        }
    }

    /// Drift by the KS test: `p < ks_p`.
    pub fn ks_drift(&self, p: f64) -> bool {
        p < self.ks_p
    }

    /// Drift by the chi-square test: `p < chi2_p`.
    pub fn chi2_drift(&self, p: f64) -> bool {
        p < self.chi2_p
    }

    /// Drift by Jensen–Shannon distance: `distance ≥ js`.
    pub fn js_drift(&self, distance: f64) -> bool {
        distance >= self.js
    }

    /// Drift by normalised Wasserstein distance: `distance ≥ wasserstein`.
    pub fn wasserstein_drift(&self, distance: f64) -> bool {
        distance >= self.wasserstein
    }
}

// ---------------------------------------------------------------------------
// Binning
// ---------------------------------------------------------------------------

/// The bin of `value` for the sorted interior `edges` `e1 < e2 < … < ek`:
/// bins are right-closed, `(-∞, e1], (e1, e2], …, (ek, +∞)`, so the index is
/// the number of edges strictly below `value` (`i` with
/// `edges[i-1] < value ≤ edges[i]`), in `0..=edges.len()`. This is NumPy's
/// `np.searchsorted(edges, value, side="left")`, which `models/generate.py`
/// uses for the reference fractions. `None` for NaN; `±∞` fall in the first
/// and last bin.
///
/// `edges` must be sorted ascending and free of NaN (as
/// [`super::reference::ReferenceStats::validate`] ensures); otherwise the
/// result is some index in range, but unspecified.
pub fn bin_index(edges: &[f64], value: f64) -> Option<usize> {
    if value.is_nan() {
        return None;
    }
    Some(edges.partition_point(|&e| e < value))
}

/// Counts `values` into the `edges.len() + 1` right-closed bins of
/// [`bin_index`]: `(-∞, e1], (e1, e2], …, (ek, +∞)`. NaN values are not
/// counted (the total may be less than the number of values).
pub fn histogram(edges: &[f64], values: impl IntoIterator<Item = f64>) -> Vec<u64> {
    let mut counts = vec![0u64; edges.len() + 1];
    for v in values {
        if let Some(slot) = bin_index(edges, v).and_then(|i| counts.get_mut(i)) {
            *slot += 1;
        }
    }
    counts
}

/// Checks reference fractions: non-empty, each finite and non-negative,
/// summing to 1 within [`FRACTION_SUM_TOLERANCE`].
fn valid_fractions(fractions: &[f64]) -> bool {
    !fractions.is_empty()
        && fractions.iter().all(|f| f.is_finite() && *f >= 0.0)
        && (fractions.iter().sum::<f64>() - 1.0).abs() <= FRACTION_SUM_TOLERANCE
}

/// Sum of counts, `None` on overflow.
fn total(counts: &[u64]) -> Option<u64> {
    counts.iter().try_fold(0u64, |acc, &c| acc.checked_add(c))
}

// ---------------------------------------------------------------------------
// PSI
// ---------------------------------------------------------------------------

/// Population Stability Index of live bin counts against reference bin
/// fractions over the same bins:
///
/// ```text
/// PSI = Σᵢ (aᵢ − eᵢ) · ln(aᵢ / eᵢ),   aᵢ = live_countsᵢ / Σ live_counts,  eᵢ = reference_fractionsᵢ
/// ```
///
/// (Siddiqi 2006, *Credit Risk Scorecards*; it is the symmetrised
/// Kullback–Leibler divergence `KL(a‖e) + KL(e‖a)`). A zero fraction on
/// either side is replaced by [`EMPTY_BIN_EPSILON`] (`1e-4`, no
/// renormalisation), as Evidently does, so empty bins give a large but finite
/// contribution. Interpret with [`PSI_WARN`] / [`PSI_ALERT`].
///
/// `None` if the lengths differ or are zero, if a reference fraction is
/// negative or not finite, if the fractions do not sum to 1 (within
/// [`FRACTION_SUM_TOLERANCE`]), or if there are no live counts.
pub fn psi(reference_fractions: &[f64], live_counts: &[u64]) -> Option<f64> {
    if reference_fractions.len() != live_counts.len() || !valid_fractions(reference_fractions) {
        return None;
    }
    let n = total(live_counts)?;
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let smooth = |f: f64| if f == 0.0 { EMPTY_BIN_EPSILON } else { f };
    let mut sum = 0.0;
    for (&e, &c) in reference_fractions.iter().zip(live_counts) {
        let e = smooth(e);
        let a = smooth(c as f64 / n);
        sum += (a - e) * (a / e).ln();
    }
    Some(sum)
}

// ---------------------------------------------------------------------------
// Chi-square
// ---------------------------------------------------------------------------

/// Pearson's chi-square goodness-of-fit test of live counts against the
/// reference fractions: statistic and p-value.
///
/// ```text
/// Eᵢ = n · ẽᵢ,   ẽᵢ = max'(eᵢ) / Σⱼ max'(eⱼ),   χ² = Σᵢ (Oᵢ − Eᵢ)² / Eᵢ,   p = Q((k − 1)/2, χ²/2)
/// ```
///
/// where `Oᵢ` are the live counts, `n = Σ Oᵢ`, `k` the number of bins,
/// `max'(e)` replaces a zero reference fraction by [`EMPTY_BIN_EPSILON`]
/// (renormalised so that `Σ Eᵢ = n`, as the test requires; with no empty bin
/// `ẽ = e` up to rounding), and `Q` is the regularised upper incomplete gamma
/// function ([`chi2_sf`] with `k − 1` degrees of freedom). This matches
/// `scipy.stats.chisquare(f_obs=live_counts, f_exp=ẽ * n)`. Without the
/// smoothing a live count in a bin the reference never saw would make the
/// statistic infinite; use one extra bin with fraction 0 for unseen
/// categories. Drift when `p <` [`CHI2_P`].
///
/// Caveats: the χ² approximation wants expected counts of about 5 or more per
/// bin; and the test treats the reference fractions as exact, so when they
/// were estimated from a sample not much larger than the live window the
/// p-values come out too small (the variance of `Oᵢ/n − eᵢ` is larger by
/// about `1 + n/n_ref`).
///
/// `None` for fewer than two bins, mismatched lengths, invalid fractions (as
/// for [`psi`]) or no live counts.
pub fn chi_square(reference_fractions: &[f64], live_counts: &[u64]) -> Option<(f64, f64)> {
    if reference_fractions.len() != live_counts.len()
        || reference_fractions.len() < 2
        || !valid_fractions(reference_fractions)
    {
        return None;
    }
    let n = total(live_counts)?;
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let smooth = |f: f64| if f == 0.0 { EMPTY_BIN_EPSILON } else { f };
    let norm: f64 = reference_fractions.iter().map(|&f| smooth(f)).sum();
    let mut stat = 0.0;
    for (&e, &o) in reference_fractions.iter().zip(live_counts) {
        let expected = smooth(e) / norm * n;
        let d = o as f64 - expected;
        stat += d * d / expected;
    }
    let dof = (reference_fractions.len() - 1) as f64;
    Some((stat, chi2_sf(stat, dof)))
}

/// Survival function of the chi-square distribution with `dof` degrees of
/// freedom, `P(X > x) = Q(dof/2, x/2)` (SciPy `chi2.sf(x, dof)`). NaN for
/// `dof ≤ 0` or NaN arguments; 1 for `x ≤ 0`.
pub fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() || dof.is_nan() || dof <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(dof / 2.0, x / 2.0)
}

/// Regularised upper incomplete gamma function
/// `Q(a, x) = Γ(a, x) / Γ(a) = 1 − P(a, x)` for `a > 0`, `x ≥ 0` (SciPy
/// `gammaincc`). NaN outside the domain.
///
/// Numerical Recipes (3rd ed., §6.2): for `x < a + 1` the series
/// `P = e^{−x} x^a / Γ(a+1) · Σₙ xⁿ / ((a+1)…(a+n))` and `Q = 1 − P` (here
/// `Q ≳ 0.3`, so no significant cancellation); otherwise the continued
/// fraction for `Q` evaluated with the modified Lentz method, which keeps
/// small upper tails accurate to their last digits. The prefactor
/// `e^{−x} x^a / Γ(a)` is computed in logarithms with [`ln_gamma`]. Relative
/// accuracy ≈ 1e-14 for moderate `a` (checked against SciPy in the tests),
/// degrading to ≈ 1e-11 for `a` in the thousands.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a <= 0.0 || x < 0.0 || a.is_infinite() {
        return f64::NAN;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    let log_prefactor = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // Series for P(a, x).
        let mut ap = a;
        let mut term = 1.0 / a;
        let mut sum = term;
        for _ in 0..MAX_GAMMA_ITERATIONS {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * f64::EPSILON {
                break;
            }
        }
        let p = (log_prefactor + sum.ln()).exp();
        (1.0 - p).clamp(0.0, 1.0)
    } else {
        // Continued fraction for Q(a, x), modified Lentz.
        let tiny = f64::MIN_POSITIVE / f64::EPSILON;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..=MAX_GAMMA_ITERATIONS {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() <= f64::EPSILON {
                break;
            }
        }
        (log_prefactor + h.ln()).exp().clamp(0.0, 1.0)
    }
}

/// Iteration cap of [`gamma_q`]: both expansions converge in `O(√a)` terms
/// near `x ≈ a`, far fewer elsewhere.
const MAX_GAMMA_ITERATIONS: u32 = 1_000_000;

/// `ln Γ(x)` for `x > 0`: Lanczos approximation (g = 7, 9 coefficients;
/// relative error ≈ 1e-15), with the reflection formula below 0.5. NaN for
/// `x ≤ 0` or NaN, `+∞` for `+∞`.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    if x < 0.5 {
        // Γ(x) Γ(1 − x) = π / sin(πx); sin(πx) > 0 on (0, 0.5).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let z = x - 1.0;
    let mut series = COEFFICIENTS[0];
    for (i, &c) in COEFFICIENTS.iter().enumerate().skip(1) {
        series += c / (z + i as f64);
    }
    let t = z + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (z + 0.5) * t.ln() - t + series.ln()
}

// ---------------------------------------------------------------------------
// Jensen–Shannon
// ---------------------------------------------------------------------------

/// Jensen–Shannon distance with base-2 logarithms, in [0, 1]:
///
/// ```text
/// p̂ = p / Σp,  q̂ = q / Σq,  m = (p̂ + q̂) / 2,
/// JS = √( (KL(p̂‖m) + KL(q̂‖m)) / (2 ln 2) ),   KL(x‖y) = Σ xᵢ ln(xᵢ / yᵢ)  (0 ln 0 = 0)
/// ```
///
/// exactly as `scipy.spatial.distance.jensenshannon(p, q, base=2)` (the square
/// root of the Jensen–Shannon divergence; Endres & Schindelin 2003 show it is
/// a metric). `p` and `q` may be fractions or counts over the same bins; each
/// is normalised by its sum. No smoothing is needed: empty bins contribute 0.
/// Drift when `≥` [`JS_DISTANCE`]. (A rounding-level negative divergence is
/// clamped to 0, where SciPy would return NaN.)
///
/// `None` if the lengths differ or are zero, a value is negative or not
/// finite, or either side sums to 0.
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> Option<f64> {
    if p.is_empty() || p.len() != q.len() {
        return None;
    }
    if p.iter().chain(q).any(|v| !v.is_finite() || *v < 0.0) {
        return None;
    }
    let sp: f64 = p.iter().sum();
    let sq: f64 = q.iter().sum();
    if !(sp > 0.0 && sp.is_finite() && sq > 0.0 && sq.is_finite()) {
        return None;
    }
    // rel_entr(x, y) = x ln(x/y) for x > 0 (y ≥ x/2 > 0 here), 0 for x = 0.
    let rel_entr = |x: f64, y: f64| if x > 0.0 { x * (x / y).ln() } else { 0.0 };
    let mut left = 0.0;
    let mut right = 0.0;
    for (&pi, &qi) in p.iter().zip(q) {
        let (pi, qi) = (pi / sp, qi / sq);
        let m = (pi + qi) / 2.0;
        left += rel_entr(pi, m);
        right += rel_entr(qi, m);
    }
    let js = (left + right) / std::f64::consts::LN_2;
    Some((js / 2.0).max(0.0).sqrt())
}

// ---------------------------------------------------------------------------
// Wasserstein
// ---------------------------------------------------------------------------

/// Wasserstein-1 (earth mover's) distance between the empirical distributions
/// of `reference` and `live`, divided by `reference_std`:
///
/// ```text
/// W₁ = ∫ |F_ref(x) − F_live(x)| dx,   result = W₁ / reference_std
/// ```
///
/// `W₁` is `scipy.stats.wasserstein_distance(reference, live)` (integrated
/// exactly over the merged sorted values). Dividing by the reference
/// standard deviation (population, `ddof = 0`, as stored in
/// `reference.json`) makes it unit-free, as Evidently's "Wasserstein distance
/// (normed)": a pure location shift by `δ` standard deviations gives `δ`.
/// Drift when `≥` [`WASSERSTEIN_NORMALISED`].
///
/// `None` if either sample is empty or holds a non-finite value, or if
/// `reference_std` is not finite and positive (a constant reference feature
/// has no scale; compare its values some other way).
pub fn wasserstein_normalised(reference: &[f64], live: &[f64], reference_std: f64) -> Option<f64> {
    if !(reference_std.is_finite() && reference_std > 0.0) {
        return None;
    }
    if reference.is_empty() || live.is_empty() {
        return None;
    }
    if reference.iter().chain(live).any(|v| !v.is_finite()) {
        return None;
    }
    let (u, v) = (sorted(reference), sorted(live));
    // Between two distinct values xₖ < xₖ₊₁ both empirical CDFs are
    // constant at their value in xₖ.
    let mut sum = 0.0;
    let mut prev: Option<(f64, f64)> = None;
    for (x, fu, fv) in ecdf_steps(&u, &v) {
        if let Some((px, gap)) = prev {
            sum += gap * (x - px);
        }
        prev = Some((x, (fu - fv).abs()));
    }
    Some(sum / reference_std)
}

/// The distinct values of two sorted samples in increasing order, each with
/// both empirical CDFs evaluated there (right-continuous):
/// `(x, F_a(x), F_b(x))`.
fn ecdf_steps<'a>(a: &'a [f64], b: &'a [f64]) -> impl Iterator<Item = (f64, f64, f64)> + 'a {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    std::iter::from_fn(move || {
        let next = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => return None,
        };
        while a.get(i).is_some_and(|&x| x <= next) {
            i += 1;
        }
        while b.get(j).is_some_and(|&y| y <= next) {
            j += 1;
        }
        Some((next, i as f64 / na, j as f64 / nb))
    })
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

// ---------------------------------------------------------------------------
// Kolmogorov–Smirnov
// ---------------------------------------------------------------------------

/// Two-sample Kolmogorov–Smirnov test, two-sided: the statistic
/// `D = supₓ |F_ref(x) − F_live(x)|` of the two empirical CDFs and its
/// p-value, matching `scipy.stats.ks_2samp(reference, live,
/// method="asymp")` (SciPy ≥ 1.5; pinned 1.17.1).
///
/// SciPy's `asymp` p-value is the survival function of the *one-sample*
/// two-sided KS distribution at `D` for the effective sample size
/// `n = round(m·k / (m + k))` (round half to even), `scipy.stats.kstwo.sf(D,
/// n)`, which this module computes with SciPy's own algorithm selection
/// (Simard & L'Ecuyer 2011): the Ruben–Gambino closed forms at the ends, the
/// Durbin matrix (Marsaglia–Tsang–Wang 2003) and Pomeranz (1974) recursions
/// for small `n·D²`, the Pelz–Good (1976) asymptotic series, and twice the
/// exact one-sided Smirnov tail (Birnbaum–Tingey 1951) for large `n·D²`. We
/// match `asymp` rather than SciPy's default `auto` (exact path counting for
/// samples up to 10 000) because its cost does not grow with the sample
/// sizes. The two p-values differ by up to a few hundredths for samples of
/// tens of values, by less than 0.001 once both have a few hundred (`asymp`
/// tends to be slightly smaller, i.e. a little quicker to flag drift).
/// Drift when `p <` [`KS_P`].
///
/// Ties are handled like SciPy (the CDFs are evaluated at every distinct
/// value, right-continuous). Infinite values are allowed.
///
/// `None` if either sample is empty or contains NaN, or if both samples hold
/// a single value (effective size rounds to 0; SciPy returns NaN).
pub fn ks_2samp(reference: &[f64], live: &[f64]) -> Option<(f64, f64)> {
    if reference.is_empty() || live.is_empty() {
        return None;
    }
    if reference.iter().chain(live).any(|v| v.is_nan()) {
        return None;
    }
    let (a, b) = (sorted(reference), sorted(live));
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let d = ecdf_steps(&a, &b).fold(0.0f64, |d, (_, fa, fb)| d.max((fa - fb).abs()));
    let (m, n) = if n1 >= n2 { (n1, n2) } else { (n2, n1) };
    let en = (m * n / (m + n)).round_ties_even();
    if en < 1.0 {
        return None;
    }
    // en ≤ min(n1, n2) fits in u64.
    let p = kstwo_sf(d, en as u64);
    Some((d, p.clamp(0.0, 1.0)))
}

/// `scipy.stats.kstwo.sf(d, n)`: `P(D_n > d)` for the two-sided one-sample
/// KS statistic of a sample of size `n ≥ 1` (port of SciPy's
/// `scipy/stats/_ksstats.py::_kolmogn`, SF branch).
pub fn kstwo_sf(d: f64, n: u64) -> f64 {
    if n == 0 || d.is_nan() {
        return f64::NAN;
    }
    let nf = n as f64;
    // Support of kstwo is [0.5/n, 1]: rv_continuous gives 1 below, 0 above.
    if d <= 0.5 / nf {
        return 1.0;
    }
    if d >= 1.0 {
        return 0.0;
    }
    let x = d;
    let t = nf * x;
    if t <= 1.0 {
        // Ruben–Gambino: P(D_n ≤ x) = n!/nⁿ (2t − 1)ⁿ for 1/2n ≤ x ≤ 1/n.
        if t <= 0.5 {
            return 1.0;
        }
        let cdf = if n <= 140 {
            let mut prod = 1.0;
            for i in 1..=n {
                prod *= i as f64 * (1.0 / nf) * (2.0 * t - 1.0);
            }
            prod
        } else {
            (log_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    if t >= nf - 1.0 {
        // Ruben–Gambino: P(D_n > x) = 2 (1 − x)ⁿ for x ≥ 1 − 1/n.
        return (2.0 * (1.0 - x).powf(nf)).clamp(0.0, 1.0);
    }
    if x >= 0.5 {
        // Exact: the one-sided tails cannot both be exceeded.
        return (2.0 * smirnov_sf(n, x)).clamp(0.0, 1.0);
    }
    let nxsquared = t * x;
    if n <= 140 {
        if nxsquared <= 0.754693 {
            return (1.0 - kolmogn_dmtw(n, x)).clamp(0.0, 1.0);
        }
        if nxsquared <= 4.0 {
            return (1.0 - kolmogn_pomeranz(n, x)).clamp(0.0, 1.0);
        }
        return (2.0 * smirnov_sf(n, x)).clamp(0.0, 1.0);
    }
    if nxsquared >= 370.0 {
        return 0.0;
    }
    if nxsquared >= 2.2 {
        return (2.0 * smirnov_sf(n, x)).clamp(0.0, 1.0);
    }
    let cdf = if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        kolmogn_dmtw(n, x)
    } else {
        kolmogn_pelz_good(nf, x)
    };
    (1.0 - cdf).clamp(0.0, 1.0)
}

/// `2^128`, the rescaling step of the Durbin and Pomeranz recursions.
const SCALE: f64 = 3.402_823_669_209_385e38;
const SCALE_EXPONENT: i64 = 128;

/// `x · 2^e` without intermediate overflow or underflow.
fn ldexp(mut x: f64, mut e: i64) -> f64 {
    while e > 0 && x != 0.0 && x.is_finite() {
        let step = e.min(512);
        x *= 2f64.powi(step as i32);
        e -= step;
    }
    while e < 0 && x != 0.0 && x.is_finite() {
        let step = (-e).min(512);
        x *= 2f64.powi(-(step as i32));
        e += step;
    }
    x
}

/// `ln(n! / nⁿ)` by Stirling's series with the `n ln n` terms cancelled.
fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    // B_{2j} / (2j (2j − 1)) for j = 8, …, 1 (highest power first).
    const STIRLING: [f64; 8] = [
        -0.029_550_653_594_771_242,
        0.006_410_256_410_256_41,
        -0.001_917_526_917_526_917_6,
        0.000_841_750_841_750_841_7,
        -0.000_595_238_095_238_095_3,
        0.000_793_650_793_650_793_7,
        -0.002_777_777_777_777_778,
        0.083_333_333_333_333_33,
    ];
    let rn = 1.0 / n;
    let z = rn / n;
    let poly = STIRLING.iter().fold(0.0, |acc, &c| acc * z + c);
    n.ln() / 2.0 - n + (2.0 * std::f64::consts::PI).ln() / 2.0 + rn * poly
}

/// `P(D_n ≤ d)` by Durbin's matrix method as arranged by Marsaglia, Tsang &
/// Wang (2003): the `k`-th diagonal entry of `n!/nⁿ · Hⁿ`, with `H` of size
/// `2k − 1`, `k = ⌈nd⌉`, and explicit exponent tracking against overflow.
fn kolmogn_dmtw(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let nd = nf * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;

    let mut v = vec![0.0; m];
    let mut w = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] = (1.0 - h.powi(j as i32)) * fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;

    let mut hm = vec![vec![0.0; m]; m];
    for i in 1..m {
        for r in (i - 1)..m {
            hm[r][i] = w[r - (i - 1)];
        }
    }
    for r in 0..m {
        hm[r][0] = v[r];
    }
    for c in 0..m {
        hm[m - 1][c] = v[m - 1 - c];
    }

    let mut pwr: Vec<Vec<f64>> = (0..m)
        .map(|r| (0..m).map(|c| if r == c { 1.0 } else { 0.0 }).collect())
        .collect();
    let mut nn = n;
    let mut expnt: i64 = 0;
    let mut h_expnt: i64 = 0;
    while nn > 0 {
        if nn % 2 == 1 {
            pwr = matmul(&pwr, &hm);
            expnt += h_expnt;
        }
        hm = matmul(&hm, &hm);
        h_expnt *= 2;
        if hm[k - 1][k - 1].abs() > SCALE {
            for row in &mut hm {
                for x in row.iter_mut() {
                    *x /= SCALE;
                }
            }
            h_expnt += SCALE_EXPONENT;
        }
        nn /= 2;
    }
    let mut p = pwr[k - 1][k - 1];
    for i in 1..=n {
        p = i as f64 * p / nf;
        if p.abs() < 1.0 / SCALE {
            p *= SCALE;
            expnt -= SCALE_EXPONENT;
        }
    }
    ldexp(p, expnt).clamp(0.0, 1.0)
}

fn matmul(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let m = b.first().map_or(0, Vec::len);
    a.iter()
        .map(|row| {
            let mut out = vec![0.0; m];
            for (&x, brow) in row.iter().zip(b) {
                if x != 0.0 {
                    for (o, &y) in out.iter_mut().zip(brow) {
                        *o += x * y;
                    }
                }
            }
            out
        })
        .collect()
}

/// Interval `[j1, j2]` of possibly non-zero entries in row `i` of the
/// Pomeranz recursion (SciPy's `_pomeranz_compute_j1j2`).
fn pomeranz_j1j2(i: i64, n: i64, ll: i64, ceilf: i64, roundf: i64) -> (i64, i64) {
    let (j1, j2) = if i == 0 {
        (-ll - ceilf - 1, ll + ceilf - 1)
    } else {
        let (ip1div2, ip1mod2) = ((i + 1) / 2, (i + 1) % 2);
        if ip1mod2 == 0 {
            if ip1div2 == n + 1 {
                (n - ll - ceilf - 1, n + ll + ceilf - 1)
            } else {
                (ip1div2 - 1 - ll - roundf - 1, ip1div2 + ll - 1 + ceilf - 1)
            }
        } else {
            (ip1div2 - 1 - ll - 1, ip1div2 + ll + roundf - 1)
        }
    };
    ((j1 + 2).max(0), j2.min(n))
}

/// `P(D_n ≤ x)` by the Pomeranz (1974) recursion: `n!` times the last entry
/// of `2n + 1` successive convolutions with (unnormalised) Poisson weights,
/// keeping two rows and rescaling against underflow.
fn kolmogn_pomeranz(n: u64, x: f64) -> f64 {
    let nf = n as f64;
    let ni = n as i64;
    let t = nf * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let npwrs = (2 * (ll + 1)) as usize;
    let mut gpower = vec![1.0; npwrs];
    let mut twogpower = vec![1.0; npwrs];
    let mut onem2gpower = vec![1.0; npwrs];
    let (g_n, two_g_n, one_m2g_n) = (g / nf, 2.0 * g / nf, (1.0 - 2.0 * g) / nf);
    for m in 1..npwrs {
        gpower[m] = gpower[m - 1] * g_n / m as f64;
        twogpower[m] = twogpower[m - 1] * two_g_n / m as f64;
        onem2gpower[m] = onem2gpower[m - 1] * one_m2g_n / m as f64;
    }

    let mut v0 = vec![0.0; npwrs];
    let mut v1 = vec![0.0; npwrs];
    v1[0] = 1.0;
    let (mut v0s, mut v1s): (i64, i64) = (0, 0);
    let mut expnt: i64 = 0;
    let (mut j1, mut _j2) = pomeranz_j1j2(0, ni, ll, ceilf, roundf);
    for i in 1..(2 * ni + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.iter_mut().for_each(|e| *e = 0.0);
        let (nj1, nj2) = pomeranz_j1j2(i, ni, ll, ceilf, roundf);
        j1 = nj1;
        _j2 = nj2;
        let pwrs = if i == 1 || i == 2 * ni + 1 {
            &gpower
        } else if i % 2 == 1 {
            &twogpower
        } else {
            &onem2gpower
        };
        let ln2 = nj2 - k1 + 1;
        if ln2 > 0 {
            // conv = convolve(V0[k1 - V0s ..][..ln2], pwrs[..ln2]) (full),
            // V1[..conv_len] = conv[conv_start ..][..conv_len]
            let start = (k1 - v0s).max(0) as usize;
            let a: &[f64] = v0.get(start..).unwrap_or(&[]);
            let a = &a[..a.len().min(ln2 as usize)];
            let b = &pwrs[..pwrs.len().min(ln2 as usize)];
            let conv_start = nj1 - k1;
            let conv_len = nj2 - nj1 + 1;
            let mut max = 0.0f64;
            for (idx, slot) in v1.iter_mut().enumerate().take(conv_len.max(0) as usize) {
                let c = conv_start + idx as i64; // index into the full convolution
                let mut s = 0.0;
                for (ai, &av) in a.iter().enumerate() {
                    let bi = c - ai as i64;
                    if let Some(&bv) = usize::try_from(bi).ok().and_then(|bi| b.get(bi)) {
                        s += av * bv;
                    }
                }
                *slot = s;
                max = max.max(s);
            }
            if max > 0.0 && max < 1.0 / SCALE {
                v1.iter_mut().for_each(|e| *e *= SCALE);
                expnt -= SCALE_EXPONENT;
            }
            v1s = v0s + nj1 - k1;
        }
    }
    let mut ans = usize::try_from(ni - v1s)
        .ok()
        .and_then(|idx| v1.get(idx))
        .copied()
        .unwrap_or(0.0);
    for m in 1..=n {
        if ans.abs() > SCALE {
            ans /= SCALE;
            expnt += SCALE_EXPONENT;
        }
        ans *= m as f64;
    }
    ldexp(ans, expnt).clamp(0.0, 1.0)
}

/// Pelz–Good (1976) approximation of `P(D_n ≤ x)`: the Li-Chien/Korolyuk
/// expansion `K₀ + K₁/√n + K₂/n + K₃/n^{3/2}` in `z = x√n`, each term
/// transformed with Jacobi theta identities into a series in
/// `q = exp(−π²/8z²)` that converges fast for small `z`.
fn kolmogn_pelz_good(n: f64, x: f64) -> f64 {
    use std::f64::consts::PI;
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let pi2 = PI * PI;
    let pi4 = pi2 * pi2;
    let pi6 = pi4 * pi2;
    let sqrt2pi = (2.0 * PI).sqrt();
    let z = n.sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let qlog = -pi2 / 8.0 / z2;
    if qlog < -708.0 {
        return 0.0;
    }
    let q = qlog.exp();

    let k1a = -z2;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);

    let mut k = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for kk in (1..=maxk).rev() {
        let m = (2 * kk - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * kk as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for (kv, c) in k.iter_mut().zip(coeffs) {
            *kv = *kv * qpower + c;
        }
    }
    let denominators = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (kv, den) in k.iter_mut().zip(denominators) {
        *kv = *kv * q * sqrt2pi / den;
    }

    let q = (-pi2 / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let mut k2extra = 0.0;
    let mut k3extra = 0.0;
    for kk in (1..=maxk).rev() {
        let kf = kk as f64;
        let ksq = kf * kf;
        let qp = q.powf(ksq);
        k2extra += ksq * qp;
        let kspi = PI * kf;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ksq * qp;
    }
    k[2] += k2extra * pi2 * sqrt2pi / (-36.0 * z3);
    k[3] += k3extra * pi2 * sqrt2pi / (216.0 * z6);
    let mut sum = 0.0;
    for (i, kv) in k.iter().enumerate() {
        sum += kv / n.powf(i as f64 / 2.0);
    }
    sum
}

/// `P(D⁺_n > x)` for the one-sided KS statistic (SciPy `smirnov(n, x)`), by
/// the Birnbaum–Tingey (1951) sum of positive terms
///
/// ```text
/// P(D⁺_n > x) = x Σ_{v=0}^{⌊n(1−x)⌋} C(n, v) (x + v/n)^{v−1} (1 − x − v/n)^{n−v}
/// ```
///
/// evaluated in logarithms (relative error ≈ n·ε), with SciPy's special
/// cases for `x ≤ 1/n`, `x ≥ 1 − 1/n`, underflow and `n > 10⁶` (where SciPy
/// uses `exp(−(6nx + 1)² / 18n)`). Only called from [`kstwo_sf`] for
/// `n·x² ≥ 2.2` or `x ≥ 0.5`.
fn smirnov_sf(n: u64, x: f64) -> f64 {
    const MIN_LOG: f64 = -708.396_418_532_264_1;
    if !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    if n == 1 {
        return 1.0 - x;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x == 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    let nx = nf * x;
    let nxfl = nx.floor();
    let alpha = nx - nxfl;
    if nxfl == 0.0 || (nxfl == 1.0 && alpha == 0.0) {
        return 1.0 - x * (1.0 + x).powf(nf - 1.0);
    }
    if -2.0 * nf * x * x < MIN_LOG {
        return 0.0;
    }
    if nxfl >= nf - 1.0 {
        return (1.0 - x).powf(nf);
    }
    if n > 1_000_000 {
        let logp = -(6.0 * nf * x + 1.0).powi(2) / 18.0 / nf;
        return if logp < -std::f64::consts::LN_2 {
            logp.exp()
        } else {
            1.0 + logp.exp_m1()
        };
    }
    // Terms v = 0 ..= n − ⌊nx⌋ − 1 (the term at v = n(1 − x) exactly is 0).
    let last = n - (nxfl as u64) - 1;
    let mut logs = Vec::with_capacity(last as usize + 1);
    let mut ln_binom = 0.0; // ln C(n, v)
    for v in 0..=last {
        let vf = v as f64;
        let up = x + vf / nf; // x + v/n
        let down = (nf - vf) / nf - x; // 1 − x − v/n
        if down > 0.0 {
            let ln_down = if down > 0.5 {
                (-(up)).ln_1p()
            } else {
                down.ln()
            };
            logs.push(ln_binom + (vf - 1.0) * up.ln() + (nf - vf) * ln_down);
        }
        ln_binom += ((nf - vf) / (vf + 1.0)).ln();
    }
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return 0.0;
    }
    let s: f64 = logs.iter().map(|l| (l - max).exp()).sum();
    (max + s.ln() + x.ln()).exp().clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rtol: f64) -> bool {
        (got - want).abs() <= rtol * want.abs() || (got == want)
    }

    #[track_caller]
    fn assert_close(got: f64, want: f64, rtol: f64) {
        assert!(
            close(got, want, rtol),
            "got {got:e}, want {want:e} (rtol {rtol:e})"
        );
    }

    /// Exact relative tolerance for closed-form statistics (only summation
    /// order differs from NumPy).
    const EXACT: f64 = 1e-12;
    /// Tolerance for special functions.
    const SPECIAL: f64 = 1e-9;

    /// Deterministic data, reproducible bit for bit in Python:
    /// `[((i * mul) % m) / m * scale + shift for i in range(n)]`.
    fn seq(n: usize, mul: usize, m: usize, scale: f64, shift: f64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * mul) % m) as f64 / m as f64 * scale + shift)
            .collect()
    }

    #[test]
    fn bins_are_right_closed_like_numpy_searchsorted_left() {
        // edges = [1, 2, 3]; vals = [-inf, .5, 1, 1.0000001, 2, 2.5, 3, 3.5, inf]
        // np.searchsorted(edges, vals, side="left") -> [0 0 0 1 1 2 2 3 3]
        // np.bincount(..., minlength=4)             -> [3 2 2 2]
        let edges = [1.0, 2.0, 3.0];
        let vals = [
            f64::NEG_INFINITY,
            0.5,
            1.0,
            1.0000001,
            2.0,
            2.5,
            3.0,
            3.5,
            f64::INFINITY,
        ];
        let idx: Vec<usize> = vals
            .iter()
            .map(|&v| bin_index(&edges, v).unwrap())
            .collect();
        assert_eq!(idx, [0, 0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(histogram(&edges, vals), [3, 2, 2, 2]);
        // NaN is not counted; no edges means one bin.
        assert_eq!(bin_index(&edges, f64::NAN), None);
        assert_eq!(histogram(&edges, [f64::NAN, 1.5]), [0, 1, 0, 0]);
        assert_eq!(histogram(&[], [1.0, -3.0]), [2]);
        assert_eq!(histogram(&edges, std::iter::empty()), [0, 0, 0, 0]);
        // Unsorted or NaN edges: no panic, some index in range.
        assert!(bin_index(&[3.0, f64::NAN, 1.0], 2.0).unwrap() <= 3);
    }

    #[test]
    fn psi_matches_numpy() {
        // ref = np.array([0.1, 0.2, 0.3, 0.0, 0.4]); cnt = np.array([12, 25, 0, 3, 60])
        // e = np.where(ref == 0, 1e-4, ref); a = cnt / cnt.sum(); a = np.where(a == 0, 1e-4, a)
        // np.sum((a - e) * np.log(a / e))  -> 2.667549359853752
        let got = psi(&[0.1, 0.2, 0.3, 0.0, 0.4], &[12, 25, 0, 3, 60]).unwrap();
        assert_close(got, 2.667549359853752, EXACT);
        // ref = np.full(10, 0.1); cnt = [9, 11, 10, 10, 12, 8, 10, 10, 9, 11]; same formula
        //   -> 0.012122716071406314
        let got = psi(&[0.1; 10], &[9, 11, 10, 10, 12, 8, 10, 10, 9, 11]).unwrap();
        assert_close(got, 0.012122716071406314, EXACT);
        // Identical distributions: 0.
        assert_eq!(psi(&[0.25; 4], &[5, 5, 5, 5]), Some(0.0));
        let t = Thresholds::default();
        assert_eq!(t.psi_level(0.012), DriftLevel::None);
        assert_eq!(t.psi_level(0.1), DriftLevel::Warn);
        assert_eq!(t.psi_level(2.67), DriftLevel::Alert);
        assert_eq!(t.psi_level(f64::NAN), DriftLevel::None);
    }

    #[test]
    fn psi_rejects_invalid_input() {
        assert_eq!(psi(&[], &[]), None);
        assert_eq!(psi(&[0.5, 0.5], &[1]), None);
        assert_eq!(psi(&[0.5, 0.5], &[0, 0]), None);
        assert_eq!(psi(&[0.5, f64::NAN], &[1, 1]), None);
        assert_eq!(psi(&[1.5, -0.5], &[1, 1]), None);
        assert_eq!(psi(&[0.5, 0.4], &[1, 1]), None); // does not sum to 1
        assert_eq!(psi(&[0.5, 0.5], &[u64::MAX, 1]), None); // count overflow
    }

    #[test]
    fn chi_square_matches_scipy() {
        // s = np.where(ref == 0, 1e-4, ref); s = s / s.sum()
        // r = scipy.stats.chisquare(f_obs=cnt, f_exp=s * cnt.sum())
        let cases: [(&[f64], &[u64], f64, f64); 4] = [
            (&[0.25, 0.25, 0.5], &[30, 20, 50], 2.0, 0.36787944117144245),
            // an empty reference bin, smoothed to 1e-4 and renormalised
            (
                &[0.1, 0.2, 0.3, 0.0, 0.4],
                &[12, 25, 0, 3, 60],
                935.7535650000004,
                2.9836912301914232e-201,
            ),
            (&[0.5, 0.5], &[900, 100], 640.0, 3.3414880386413873e-141),
            (
                &[0.1; 10],
                &[9, 11, 10, 10, 12, 8, 10, 10, 9, 11],
                1.2000000000000002,
                0.9988211034284458,
            ),
        ];
        for (reference, live, stat, p) in cases {
            let (s, pv) = chi_square(reference, live).unwrap();
            assert_close(s, stat, EXACT);
            assert_close(pv, p, SPECIAL);
        }
        assert_eq!(chi_square(&[1.0], &[5]), None); // no degrees of freedom
        assert_eq!(chi_square(&[0.5, 0.5], &[0, 0]), None);
        assert_eq!(chi_square(&[0.5, 0.5], &[1, 2, 3]), None);
        assert!(Thresholds::default().chi2_drift(0.01));
        assert!(!Thresholds::default().chi2_drift(0.36));
    }

    #[test]
    fn chi2_sf_matches_scipy() {
        // scipy.stats.chi2.sf(x, k)
        let table = [
            (0.5, 1.0, 0.47950012218695337),
            (3.84, 1.0, 0.05004352124870519),
            (10.0, 3.0, 0.01856613546304325),
            (1e-3, 2.0, 0.9995001249791693),
            (50.0, 10.0, 2.669083424904495e-07),
            (9.0, 9.0, 0.43727418891386693),
            (200.0, 150.0, 0.003973185970821635),
            (120.0, 99.0, 0.07424385580596692),
            (1000.0, 1200.0, 0.9999922147274382),
            (1400.0, 1200.0, 5.035224680499375e-05),
            (0.1, 30.0, 1.0),
        ];
        for (x, k, want) in table {
            assert_close(chi2_sf(x, k), want, SPECIAL);
        }
        assert_eq!(chi2_sf(0.0, 3.0), 1.0);
        assert_eq!(chi2_sf(f64::INFINITY, 3.0), 0.0);
        assert!(chi2_sf(1.0, 0.0).is_nan());
        assert!(chi2_sf(f64::NAN, 2.0).is_nan());
    }

    #[test]
    fn gamma_functions_match_scipy() {
        // scipy.special.gammaincc(a, x)
        let table = [
            (0.5, 0.1, 0.6547208460185768),
            (0.5, 2.0, 0.04550026389635857),
            (1.0, 1.0, 0.36787944117144245),
            (2.5, 0.3, 0.9880032427940937),
            (3.0, 10.0, 0.0027693957155115775),
            (10.0, 9.5, 0.5218260222372076),
            (10.0, 11.5, 0.28879453954867124),
            (30.0, 60.0, 6.876264968732136e-06),
            (100.0, 80.0, 0.9828916869648668),
            (0.1, 5.0, 0.00014393896584673387),
        ];
        for (a, x, want) in table {
            assert_close(gamma_q(a, x), want, SPECIAL);
        }
        assert!(gamma_q(0.0, 1.0).is_nan() && gamma_q(1.0, -1.0).is_nan());
        // scipy.special.gammaln(a)
        let table = [
            (0.1, 2.252712651734206),
            (0.5, 0.5723649429247),
            (1.5, -0.12078223763524526),
            (3.7, 1.428072326665388),
            (10.0, 12.801827480081469),
            (171.5, 709.1431630309283),
            (1e4, 82099.71749644238),
        ];
        for (a, want) in table {
            assert_close(ln_gamma(a), want, 1e-13);
        }
        assert!(ln_gamma(1.0).abs() < 1e-15 && ln_gamma(2.0).abs() < 1e-15);
        assert!(ln_gamma(0.0).is_nan() && ln_gamma(-1.0).is_nan());
    }

    #[test]
    fn jensen_shannon_matches_scipy() {
        // scipy.spatial.distance.jensenshannon(p, q, base=2)
        let got = jensen_shannon(&[0.1, 0.4, 0.5], &[0.8, 0.15, 0.05]).unwrap();
        assert_close(got, 0.6482287947757128, EXACT);
        // fractions against counts, with empty bins on either side
        let got = jensen_shannon(&[0.25, 0.25, 0.0, 0.5], &[10.0, 0.0, 5.0, 85.0]).unwrap();
        assert_close(got, 0.455036886190266, EXACT);
        assert_close(
            jensen_shannon(&[1.0, 0.0], &[0.0, 1.0]).unwrap(),
            1.0,
            EXACT,
        );
        assert_eq!(
            jensen_shannon(&[0.2, 0.3, 0.5], &[2.0, 3.0, 5.0]),
            Some(0.0)
        );
        assert_eq!(jensen_shannon(&[], &[]), None);
        assert_eq!(jensen_shannon(&[0.5, 0.5], &[1.0]), None);
        assert_eq!(jensen_shannon(&[0.0, 0.0], &[1.0, 0.0]), None);
        assert_eq!(jensen_shannon(&[-0.5, 1.5], &[1.0, 0.0]), None);
        assert_eq!(jensen_shannon(&[f64::NAN, 1.0], &[1.0, 0.0]), None);
        assert!(Thresholds::default().js_drift(0.1) && !Thresholds::default().js_drift(0.09));
    }

    #[test]
    fn wasserstein_matches_scipy() {
        // u = [0, 1, 3, 3, 7.5]; v = [5, 6, 8, 1]
        // scipy.stats.wasserstein_distance(u, v) -> 2.1; np.std(u) -> 2.576819745345025
        // wasserstein_distance(u, v) / np.std(u)  -> 0.8149580519916496
        let u = [0.0, 1.0, 3.0, 3.0, 7.5];
        let v = [5.0, 6.0, 8.0, 1.0];
        assert_close(wasserstein_normalised(&u, &v, 1.0).unwrap(), 2.1, EXACT);
        assert_close(
            wasserstein_normalised(&u, &v, 2.576819745345025).unwrap(),
            0.8149580519916496,
            EXACT,
        );
        // u = seq(1000, 37, 1009, 4.0, -2.0); v = seq(300, 53, 307, 4.0, -1.7)
        // wasserstein_distance(u, v) / 1.25 -> 0.2382808706441161
        let u = seq(1000, 37, 1009, 4.0, -2.0);
        let v = seq(300, 53, 307, 4.0, -1.7);
        assert_close(
            wasserstein_normalised(&u, &v, 1.25).unwrap(),
            0.2382808706441161,
            1e-10,
        );
        // A pure shift by δ standard deviations gives δ.
        let shifted: Vec<f64> = u.iter().map(|x| x + 0.25).collect();
        assert_close(
            wasserstein_normalised(&u, &shifted, 2.5).unwrap(),
            0.1,
            1e-10,
        );
        assert_eq!(wasserstein_normalised(&u, &u, 1.0), Some(0.0));
        assert_eq!(wasserstein_normalised(&[], &v, 1.0), None);
        assert_eq!(wasserstein_normalised(&u, &[], 1.0), None);
        assert_eq!(wasserstein_normalised(&u, &v, 0.0), None);
        assert_eq!(wasserstein_normalised(&u, &v, f64::NAN), None);
        assert_eq!(wasserstein_normalised(&u, &[f64::INFINITY], 1.0), None);
        assert_eq!(wasserstein_normalised(&[f64::NAN], &v, 1.0), None);
    }

    #[test]
    fn ks_2samp_matches_scipy_asymp() {
        // a = [1, 2, 2, 3, 4, 5, 5, 9]; b = [2, 2.5, 5, 6, 7, 8]
        // scipy.stats.ks_2samp(a, b, method="asymp") -> (0.375, 0.6640625)
        let (d, p) = ks_2samp(
            &[1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 5.0, 9.0],
            &[2.0, 2.5, 5.0, 6.0, 7.0, 8.0],
        )
        .unwrap();
        assert_close(d, 0.375, EXACT);
        assert_close(p, 0.6640625, SPECIAL);
        // a = seq(n1, mul1, m1, scale1, 0.0); b = seq(n2, mul2, m2, scale2, shift)
        // scipy.stats.ks_2samp(a, b, method="asymp")
        let cases = [
            (
                (100, 37, 101, 1.0),
                (80, 29, 83, 1.0, 0.05),
                0.0625,
                0.9911754271196186,
            ),
            (
                (1000, 37, 1009, 1.0),
                (600, 53, 601, 1.0, 0.01),
                0.015666666666666718,
                0.9999759459239925,
            ),
            (
                (1000, 37, 1009, 1.0),
                (600, 53, 601, 1.0, 0.08),
                0.08600000000000008,
                0.00731992850718286,
            ),
            (
                (1000, 37, 1009, 1.0),
                (600, 53, 601, 1.0, 0.3),
                0.3063333333333334,
                9.809331386060529e-32,
            ),
            (
                (1000, 37, 1009, 1.0),
                (5000, 71, 4999, 1.1, 0.0),
                0.09160000000000001,
                1.56256568475344e-06,
            ),
            ((50, 7, 10, 1.0), (40, 3, 10, 1.0, 0.0), 0.0, 1.0),
        ];
        for ((n1, k1, m1, s1), (n2, k2, m2, s2, shift), want_d, want_p) in cases {
            let a = seq(n1, k1, m1, s1, 0.0);
            let b = seq(n2, k2, m2, s2, shift);
            let (d, p) = ks_2samp(&a, &b).unwrap();
            assert_close(d, want_d, EXACT);
            assert_close(p, want_p, SPECIAL);
            // symmetric
            assert_eq!(ks_2samp(&b, &a), Some((d, p)));
        }
        // Completely separated samples.
        let (d, p) = ks_2samp(&seq(200, 1, 200, 1.0, 0.0), &seq(300, 1, 300, 1.0, 5.0)).unwrap();
        assert_eq!(d, 1.0);
        assert_eq!(p, 0.0);
        assert!(Thresholds::default().ks_drift(0.0073) && !Thresholds::default().ks_drift(0.99));
    }

    #[test]
    fn ks_2samp_rejects_invalid_input() {
        assert_eq!(ks_2samp(&[], &[1.0]), None);
        assert_eq!(ks_2samp(&[1.0], &[]), None);
        assert_eq!(ks_2samp(&[1.0, f64::NAN], &[1.0]), None);
        assert_eq!(ks_2samp(&[1.0], &[2.0]), None); // effective size rounds to 0
        // Infinities are ordinary (extreme) values.
        let (d, _) = ks_2samp(&[f64::NEG_INFINITY, 0.0], &[0.0, f64::INFINITY]).unwrap();
        assert_eq!(d, 0.5);
    }

    #[test]
    fn kstwo_sf_matches_scipy_in_every_regime() {
        // scipy.stats.kstwo.sf(d, n); the comment names the branch of _kolmogn
        let table = [
            (0.04, 10, 1.0),                        // d ≤ 0.5/n
            (0.08, 10, 0.9999978058034054),         // Ruben–Gambino, t ≤ 1
            (0.15, 10, 0.95396527),                 // Durbin matrix
            (0.3, 10, 0.27053557479999946),         // Pomeranz
            (0.5, 10, 0.00777741),                  // 2 · smirnov (x ≥ 0.5)
            (0.95, 10, 1.9531250000000172e-13),     // Ruben–Gambino, t ≥ n − 1
            (0.2, 25, 0.23632065644537592),         // Pomeranz
            (0.35, 25, 0.00304775176916261),        // Pomeranz
            (0.45, 25, 3.863870896956907e-05),      // 2 · smirnov
            (0.1, 100, 0.2526927570063874),         // Pomeranz
            (0.15, 100, 0.019839242125643017),      // 2 · smirnov
            (0.25, 100, 5.408871776434847e-06),     // 2 · smirnov
            (0.003, 140, 1.0),                      // d ≤ 0.5/n
            (0.05, 200, 0.6802625495871704),        // Pelz–Good
            (0.08, 200, 0.1463961356372503),        // Pelz–Good
            (0.12, 200, 0.005745760601982814),      // 2 · smirnov (n x² ≥ 2.2)
            (0.2, 200, 1.7317874617308334e-07),     // 2 · smirnov
            (0.02, 1000, 0.8108971656895577),       // Durbin matrix (n x^1.5 ≤ 1.4)
            (0.04, 1000, 0.07933956059000224),      // Pelz–Good
            (0.06, 1000, 0.001428597887952891),     // 2 · smirnov
            (0.002, 100001, 0.8178361459744294),    // Pelz–Good (n > 100000)
            (0.006, 100001, 0.0014870418583881545), // 2 · smirnov
        ];
        for (d, n, want) in table {
            let got = kstwo_sf(d, n);
            assert!(
                close(got, want, SPECIAL),
                "kstwo.sf({d}, {n}) = {got:e}, want {want:e}"
            );
        }
        assert_eq!(kstwo_sf(1.0, 10), 0.0);
        assert!(kstwo_sf(0.5, 0).is_nan() && kstwo_sf(f64::NAN, 5).is_nan());
    }

    #[test]
    fn thresholds_deserialise_with_defaults() {
        let t: Thresholds = serde_json::from_str("{}").unwrap();
        assert_eq!(t, Thresholds::default());
        assert_eq!(
            t,
            Thresholds {
                psi_warn: 0.1,
                psi_alert: 0.25,
                ks_p: 0.05,
                chi2_p: 0.05,
                js: 0.1,
                wasserstein: 0.1
            }
        );
        t.validate().unwrap();
        let t: Thresholds = serde_json::from_str(r#"{"psi_alert": 0.3, "ks_p": 0.01}"#).unwrap();
        assert_eq!((t.psi_alert, t.ks_p, t.psi_warn), (0.3, 0.01, 0.1));
        assert!(serde_json::from_str::<Thresholds>(r#"{"psi": 0.3}"#).is_err());
        let bad = Thresholds {
            psi_warn: 0.3,
            psi_alert: 0.2,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
        let bad = Thresholds {
            ks_p: 1.0,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
        let bad = Thresholds {
            js: f64::NAN,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
        let bad = Thresholds {
            wasserstein: 0.0,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
    }
}
