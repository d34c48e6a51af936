//! Atoms → projected Coulomb potential on the pixel grid (V·Å per pixel, i.e. the potential integrated along the
//! beam and averaged over the pixel's area).
//!
//! Each atom is a sum of 2-D Gaussians (its five Peng terms blurred by a B-factor, optional implicit hydrogens, and
//! a negative Gaussian for the ice it displaces). A Gaussian's average over a square pixel is exact with erf:
//! ∫ exp(−(x−μ)²/2s²) dx over [x₀, x₁] = s√(π/2) [erf((x₁−μ)/s√2) − erf((x₀−μ)/s√2)], separable in x and y.
//! To make 10⁷ atoms affordable, the per-species footprint is tabulated once for `NSUB × NSUB` sub-pixel positions
//! of the atom centre; an atom uses the table of its nearest sub-position (position error ≤ 1/(2·NSUB) pixel).
//! Every table entry sums exactly to the species' integral (up to the 5σ truncation, < 10⁻⁶ of it).

use crate::scattering::{self, Peng, TWO_PI_A0_E};
use crate::structure::Structure;
use std::f64::consts::PI;

/// Sub-pixel positions tabulated per axis.
pub const NSUB: usize = 16;

/// Hydrogens per non-hydrogen atom of a protein, from the averagine composition C4.9384 H7.7583 N1.3577 O1.4773
/// S0.0417 (Senko, Beu & McLafferty 1995, J. Am. Soc. Mass Spectrom. 6:229): 7.7583 / 7.8151.
pub const IMPLICIT_H_PER_HEAVY: f64 = 7.7583 / 7.8151;

/// Volume of solvent displaced per non-hydrogen atom of a protein (Å³): averagine's 111.1254 Da per 7.8151
/// heavy atoms (hydrogens included) at the protein density 1.35 g/cm³ (0.813 Da/Å³).
pub const DISPLACED_VOLUME_PER_HEAVY: f64 = 111.1254 / 7.8151 / (1.35 * 0.602_214);

/// One Gaussian term of a projected atom: `integral` in V·Å³ and width `b` in Å² (profile ∝ exp(−4π² r² / b)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Term {
    pub integral: f64,
    pub b: f64,
}

/// The projected-potential terms of one element as the simulator models it.
pub fn element_terms(el: &Peng, bfactor: f64, implicit_h: bool, ice_potential: f64) -> Vec<Term> {
    let mut t: Vec<Term> =
        el.a.iter()
            .zip(&el.b)
            .map(|(&a, &b)| Term {
                integral: TWO_PI_A0_E * a,
                b: b + bfactor,
            })
            .collect();
    // Organic heavy atoms carry hydrogens (when the model has none) and displace solvent.
    if matches!(el.symbol, "C" | "N" | "O" | "S" | "P") {
        if implicit_h && el.symbol != "P" {
            let h = scattering::lookup("H").expect("H in table");
            t.extend(h.a.iter().zip(&h.b).map(|(&a, &b)| Term {
                integral: TWO_PI_A0_E * a * IMPLICIT_H_PER_HEAVY,
                b: b + bfactor,
            }));
        }
        // A 3-D Gaussian of unit peak occupancy and the atom's volume v: σ = v^(1/3) / √(2π) (Grant & Pickup 1995).
        let v = DISPLACED_VOLUME_PER_HEAVY;
        let sigma = v.cbrt() / (2.0 * PI).sqrt();
        t.push(Term {
            integral: -ice_potential * v,
            b: 8.0 * PI * PI * sigma * sigma + bfactor,
        });
    }
    t
}

/// Pixel-averaged projected potential (V·Å) of `terms` for an atom at `(cx, cy)` pixels (pixel j covers [j, j+1)),
/// added into the `k × k` window whose top-left pixel is `origin = (x0, y0)`.
pub fn rasterize(
    terms: &[Term],
    pixel: f64,
    (cx, cy): (f64, f64),
    (x0, y0): (i64, i64),
    k: usize,
    out: &mut [f32],
) {
    let mut ex = vec![0f64; k];
    let mut ey = vec![0f64; k];
    for t in terms {
        let s = (t.b / (8.0 * PI * PI)).sqrt(); // Gaussian σ in Å
        let inv = pixel / (s * std::f64::consts::SQRT_2); // pixel units → erf argument
        let edge = |x: f64| libm::erf(x * inv);
        for j in 0..k {
            ex[j] = edge((x0 + j as i64 + 1) as f64 - cx) - edge((x0 + j as i64) as f64 - cx);
            ey[j] = edge((y0 + j as i64 + 1) as f64 - cy) - edge((y0 + j as i64) as f64 - cy);
        }
        // Σ ex = Σ ey = 2 over the whole line; the pixel value is integral · ex · ey / (4 p²).
        let c = t.integral / (4.0 * pixel * pixel);
        for (j, &wy) in ey.iter().enumerate() {
            let row = &mut out[j * k..(j + 1) * k];
            for (o, &wx) in row.iter_mut().zip(&ex) {
                *o += (c * wx * wy) as f32;
            }
        }
    }
}

/// Footprints of one species for every sub-pixel position: `data[((sy * NSUB + sx) * k + j) * k + i]`.
#[derive(Debug, Clone)]
pub struct KernelTable {
    pub half: usize,
    pub k: usize,
    pub data: Vec<f32>,
}

impl KernelTable {
    pub fn new(terms: &[Term], pixel: f64) -> KernelTable {
        let bmax = terms.iter().map(|t| t.b).fold(0.0, f64::max);
        let smax = (bmax / (8.0 * PI * PI)).sqrt();
        let half = (5.0 * smax / pixel).ceil() as usize + 1;
        let k = 2 * half + 1;
        let mut data = vec![0f32; NSUB * NSUB * k * k];
        for sy in 0..NSUB {
            for sx in 0..NSUB {
                let (ox, oy) = (
                    (sx as f64 + 0.5) / NSUB as f64,
                    (sy as f64 + 0.5) / NSUB as f64,
                );
                let off = (sy * NSUB + sx) * k * k;
                // Atom in pixel `half` of the window, at sub-position (ox, oy).
                let centre = (half as f64 + ox, half as f64 + oy);
                rasterize(terms, pixel, centre, (0, 0), k, &mut data[off..off + k * k]);
            }
        }
        KernelTable { half, k, data }
    }

    fn kernel(&self, sx: usize, sy: usize) -> &[f32] {
        let off = (sy * NSUB + sx) * self.k * self.k;
        &self.data[off..off + self.k * self.k]
    }
}

/// A structure prepared for projection: atoms centred on their centroid, one kernel table per element present.
pub struct Projector {
    /// (x, y, z) in Å relative to the centroid, table index, occupancy.
    atoms: Vec<([f32; 3], u16, f32)>,
    pub tables: Vec<KernelTable>,
    /// Element symbol of each table.
    pub table_elements: Vec<&'static str>,
    pub pixel: f64,
    /// Largest atom distance from the centroid (Å).
    pub radius: f64,
    /// Integral of one particle's projected potential (V·Å³), atoms and displaced solvent together.
    pub particle_integral: f64,
}

impl Projector {
    pub fn new(s: &Structure, pixel: f64, bfactor: f64, ice_potential: f64) -> Projector {
        let c = s.centroid();
        let mut elements: Vec<usize> = s.atoms.iter().map(|a| a.element).collect();
        elements.sort_unstable();
        elements.dedup();
        let implicit_h = !s.has_hydrogens;
        let mut tables = Vec::new();
        let mut table_elements = Vec::new();
        let mut integrals = Vec::new();
        for &e in &elements {
            let el = &scattering::TABLE[e];
            let terms = element_terms(el, bfactor, implicit_h, ice_potential);
            integrals.push(terms.iter().map(|t| t.integral).sum::<f64>());
            tables.push(KernelTable::new(&terms, pixel));
            table_elements.push(el.symbol);
        }
        let mut particle_integral = 0.0;
        let atoms = s
            .atoms
            .iter()
            .map(|a| {
                let t = elements.binary_search(&a.element).expect("element listed");
                particle_integral += integrals[t] * a.occupancy;
                (
                    [
                        (a.pos[0] - c[0]) as f32,
                        (a.pos[1] - c[1]) as f32,
                        (a.pos[2] - c[2]) as f32,
                    ],
                    t as u16,
                    a.occupancy as f32,
                )
            })
            .collect();
        Projector {
            atoms,
            tables,
            table_elements,
            pixel,
            radius: s.radius(),
            particle_integral,
        }
    }

    pub fn n_atoms(&self) -> usize {
        self.atoms.len()
    }

    /// Widest kernel half-width (pixels).
    pub fn max_half(&self) -> usize {
        self.tables.iter().map(|t| t.half).max().unwrap_or(0)
    }

    /// Half-size (pixels) of the square box that holds one particle's projection.
    pub fn box_half(&self) -> usize {
        (self.radius / self.pixel).ceil() as usize + self.max_half() + 2
    }

    /// Project one particle rotated by `rot` (row-major 3×3, applied to centroid-relative coordinates) and
    /// centred at `(cx, cy)` pixels of the micrograph. Returns the box and the micrograph coordinates of its
    /// top-left pixel; the box side is `2 * box_half() + 1`.
    pub fn project(&self, rot: &[[f64; 3]; 3], cx: f64, cy: f64) -> (Vec<f32>, i64, i64) {
        let bh = self.box_half() as i64;
        let side = (2 * bh + 1) as usize;
        let (bx0, by0) = (cx.floor() as i64 - bh, cy.floor() as i64 - bh);
        let mut out = vec![0f32; side * side];
        let r: [[f32; 3]; 2] = [rot[0].map(|v| v as f32), rot[1].map(|v| v as f32)];
        let inv_p = (1.0 / self.pixel) as f32;
        // Atom position in box pixel coordinates.
        let (ox, oy) = ((cx - bx0 as f64) as f32, (cy - by0 as f64) as f32);
        for &(p, t, occ) in &self.atoms {
            let x = (r[0][0] * p[0] + r[0][1] * p[1] + r[0][2] * p[2]) * inv_p + ox;
            let y = (r[1][0] * p[0] + r[1][1] * p[1] + r[1][2] * p[2]) * inv_p + oy;
            let tab = &self.tables[t as usize];
            let (ix, iy) = (x.floor(), y.floor());
            let sx = (((x - ix) * NSUB as f32) as usize).min(NSUB - 1);
            let sy = (((y - iy) * NSUB as f32) as usize).min(NSUB - 1);
            let (x0, y0) = (ix as usize - tab.half, iy as usize - tab.half);
            let ker = tab.kernel(sx, sy);
            for j in 0..tab.k {
                let dst = &mut out[(y0 + j) * side + x0..(y0 + j) * side + x0 + tab.k];
                let src = &ker[j * tab.k..(j + 1) * tab.k];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += occ * s;
                }
            }
        }
        (out, bx0, by0)
    }
}

/// Rotation matrix of the unit quaternion (w, x, y, z).
pub fn quaternion_matrix(q: [f64; 4]) -> [[f64; 3]; 3] {
    let [w, x, y, z] = q;
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// A uniformly random rotation (uniform on SO(3)) from three uniform numbers in [0, 1) (Shoemake 1992,
/// "Uniform random rotations", Graphics Gems III), as a unit quaternion (w, x, y, z) with w ≥ 0.
pub fn uniform_quaternion(u1: f64, u2: f64, u3: f64) -> [f64; 4] {
    let (a, b) = ((1.0 - u1).sqrt(), u1.sqrt());
    let (t1, t2) = (2.0 * PI * u2, 2.0 * PI * u3);
    let q = [b * t2.cos(), a * t1.sin(), a * t1.cos(), b * t2.sin()];
    if q[0] < 0.0 {
        q.map(|v| -v)
    } else {
        q
    }
}

/// ZYZ Euler angles (rot, tilt, psi) in degrees of a rotation matrix, RELION's convention for
/// `R = Rz(psi) Ry(tilt) Rz(rot)` applied to the model; recorded for convenience next to the quaternion.
pub fn euler_zyz_deg(r: &[[f64; 3]; 3]) -> [f64; 3] {
    let tilt = r[2][2].clamp(-1.0, 1.0).acos();
    let (rot, psi) = if tilt.sin().abs() > 1e-9 {
        (r[2][1].atan2(-r[2][0]), r[1][2].atan2(r[0][2]))
    } else {
        // Gimbal lock: only rot + psi is defined; put it all in psi.
        (0.0, r[1][0].atan2(r[0][0]))
    };
    [rot.to_degrees(), tilt.to_degrees(), psi.to_degrees()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carbon_terms(b: f64) -> Vec<Term> {
        element_terms(scattering::lookup("C").unwrap(), b, false, 0.0)
    }

    /// One carbon atom's pixel-averaged projected potential integrates (Σ pixels × p²) to 2π a₀ e · f_e(0)
    /// = 47.878 V·Å² × 2.5092 Å = 120.13 V·Å³, within 1e-5 relative, at any sub-pixel position and pixel size.
    #[test]
    fn one_atom_integrates_to_its_total() {
        let expected = TWO_PI_A0_E * scattering::lookup("C").unwrap().f0();
        assert!((expected - 120.13).abs() < 0.01, "{expected}");
        for (pixel, b) in [(1.0, 0.0), (0.667, 20.0), (2.5, 50.0)] {
            let t = KernelTable::new(&carbon_terms(b), pixel);
            for (sx, sy) in [(0, 0), (3, 11), (15, 15)] {
                let sum: f64 =
                    t.kernel(sx, sy).iter().map(|&v| v as f64).sum::<f64>() * pixel * pixel;
                assert!(
                    (sum / expected - 1.0).abs() < 1e-5,
                    "p={pixel} B={b}: {sum} vs {expected}"
                );
            }
        }
        // With displaced solvent the total is the atom minus the ice it replaces.
        let v_ice = scattering::ice_mean_potential();
        let terms = element_terms(scattering::lookup("C").unwrap(), 0.0, false, v_ice);
        let t = KernelTable::new(&terms, 1.0);
        let sum: f64 = t.kernel(5, 5).iter().map(|&v| v as f64).sum();
        let want = expected - v_ice * DISPLACED_VOLUME_PER_HEAVY;
        assert!((sum / want - 1.0).abs() < 1e-5, "{sum} vs {want}");
    }

    /// The pixel values approach the analytic point value 2π a₀ e Σ a_i (4π/b_i) exp(−4π² r²/b_i) for pixels small
    /// against the atom (0.05 Å pixels, B = 30 Å²; within 1 %).
    #[test]
    fn matches_the_analytic_profile() {
        let terms = carbon_terms(30.0);
        let p = 0.05;
        let k = 81;
        let mut out = vec![0f32; k * k];
        rasterize(&terms, p, (40.5, 40.5), (0, 0), k, &mut out);
        for (j, i) in [(40, 40), (40, 50), (60, 40), (70, 70)] {
            let r = (((i as f64 + 0.5 - 40.5) * p).powi(2) + ((j as f64 + 0.5 - 40.5) * p).powi(2))
                .sqrt();
            let want: f64 = terms
                .iter()
                .map(|t| t.integral * 4.0 * PI / t.b * (-4.0 * PI * PI * r * r / t.b).exp())
                .sum();
            let got = out[j * k + i] as f64;
            assert!((got / want - 1.0).abs() < 0.01, "r={r}: {got} vs {want}");
        }
    }

    #[test]
    fn rotations_are_proper_and_euler_round_trips() {
        for (u1, u2, u3) in [(0.1, 0.2, 0.3), (0.9, 0.5, 0.05), (0.5, 0.99, 0.7)] {
            let q = uniform_quaternion(u1, u2, u3);
            let n: f64 = q.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-12);
            let r = quaternion_matrix(q);
            let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
                - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
                + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
            assert!((det - 1.0).abs() < 1e-12);
            // Rebuild R = Rz(psi) Ry(tilt) Rz(rot) from the angles.
            let [a, b, c] = euler_zyz_deg(&r).map(f64::to_radians);
            let rz = |t: f64| {
                [
                    [t.cos(), -t.sin(), 0.0],
                    [t.sin(), t.cos(), 0.0],
                    [0.0, 0.0, 1.0],
                ]
            };
            let ry = |t: f64| {
                [
                    [t.cos(), 0.0, t.sin()],
                    [0.0, 1.0, 0.0],
                    [-t.sin(), 0.0, t.cos()],
                ]
            };
            let mul = |x: [[f64; 3]; 3], y: [[f64; 3]; 3]| {
                let mut m = [[0.0; 3]; 3];
                for i in 0..3 {
                    for j in 0..3 {
                        m[i][j] = (0..3).map(|k| x[i][k] * y[k][j]).sum();
                    }
                }
                m
            };
            let back = mul(rz(c), mul(ry(b), rz(a)));
            for i in 0..3 {
                for j in 0..3 {
                    assert!((back[i][j] - r[i][j]).abs() < 1e-9, "{back:?} vs {r:?}");
                }
            }
        }
    }

    /// Uniform on SO(3): the rotated z axis is uniform on the sphere, so its z component is uniform on [−1, 1]
    /// (mean 0, variance 1/3; 20,000 draws, tolerance 5 standard errors).
    #[test]
    fn orientations_are_uniform() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 20_000;
        let zs: Vec<f64> = (0..n)
            .map(|_| {
                quaternion_matrix(uniform_quaternion(rng.random(), rng.random(), rng.random()))[2]
                    [2]
            })
            .collect();
        let mean = zs.iter().sum::<f64>() / n as f64;
        let var = zs.iter().map(|z| (z - mean).powi(2)).sum::<f64>() / n as f64;
        let se = (1.0f64 / 3.0 / n as f64).sqrt();
        assert!(mean.abs() < 5.0 * se, "{mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "{var}");
    }
}
