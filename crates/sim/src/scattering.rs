//! Electron scattering factors of neutral atoms and the projected potentials built from them.
//!
//! Peng, Ren, Dudarev & Whelan (1996), "Robust parameterization of elastic and absorptive electron atomic scattering
//! factors", Acta Cryst. A52, 257–276: f_e(s) = Σ_{i=1..5} a_i exp(−b_i s²), s = sin θ / λ = q / 2 (Å⁻¹), f_e in Å.
//! The parameters are those of the fit over 0 ≤ s ≤ 6 Å⁻¹, as tabulated in International Tables for
//! Crystallography Vol. C, Table 4.3.2.3.
//!
//! The 3-D potential is V(r) = (h² / 2π m₀ e) ∫ f_e(q) exp(−2πi q·r) d³q (Kirkland, "Advanced Computing in Electron
//! Microscopy", eq. 5.9), with h² / 2π m₀ e = 2π a₀ e = 47.878 V·Å². Projected along z, one Gaussian term a·exp(−b q²/4)
//! becomes 2π a₀ e · a · (4π / b) · exp(−4π² r² / b) (V·Å), whose integral over the plane is 2π a₀ e · a (V·Å³).

/// 2π a₀ e in V·Å²: a₀ = 0.529177 Å (Bohr radius), e²/(4πε₀) = 14.3996 V·Å.
pub const TWO_PI_A0_E: f64 = 2.0 * std::f64::consts::PI * 0.529_177_210_9 * 14.399_645;

/// Five-Gaussian parameters of one element: amplitudes `a` (Å) and widths `b` (Å²).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peng {
    pub symbol: &'static str,
    pub a: [f64; 5],
    pub b: [f64; 5],
}

impl Peng {
    /// f_e(q) in Å at spatial frequency q (Å⁻¹); s = q/2.
    pub fn f(&self, q: f64) -> f64 {
        let s2 = q * q / 4.0;
        self.a
            .iter()
            .zip(self.b.iter())
            .map(|(a, b)| a * (-b * s2).exp())
            .sum()
    }

    /// f_e(0) = Σ a_i (Å): the projected potential of one atom integrates to `TWO_PI_A0_E * f0()` V·Å³.
    pub fn f0(&self) -> f64 {
        self.a.iter().sum()
    }
}

macro_rules! peng {
    ($sym:literal, [$($a:expr),*], [$($b:expr),*]) => {
        Peng { symbol: $sym, a: [$($a),*], b: [$($b),*] }
    };
}

/// Neutral atoms, Peng et al. 1996 (0 ≤ s ≤ 6 Å⁻¹): H–Zn and the heavier elements seen in biological models.
pub const TABLE: &[Peng] = &[
    peng!(
        "H",
        [0.0088, 0.0449, 0.1481, 0.2356, 0.0914],
        [0.1152, 1.0867, 4.9755, 16.5591, 43.2743]
    ),
    peng!(
        "He",
        [0.0084, 0.0443, 0.1314, 0.1671, 0.0666],
        [0.0596, 0.536, 2.4274, 7.7852, 20.3126]
    ),
    peng!(
        "Li",
        [0.0478, 0.2048, 0.5253, 1.5225, 0.9853],
        [0.2258, 2.1032, 12.9349, 50.7501, 136.628]
    ),
    peng!(
        "Be",
        [0.0423, 0.1874, 0.6019, 1.4311, 0.7891],
        [0.1445, 1.418, 8.1165, 27.9705, 74.8684]
    ),
    peng!(
        "B",
        [0.0436, 0.1898, 0.6788, 1.3273, 0.5544],
        [0.1207, 1.1595, 6.2474, 21.046, 59.3619]
    ),
    peng!(
        "C",
        [0.0489, 0.2091, 0.7537, 1.142, 0.3555],
        [0.114, 1.0825, 5.4281, 17.8811, 51.1341]
    ),
    peng!(
        "N",
        [0.0267, 0.1328, 0.5301, 1.102, 0.4215],
        [0.0541, 0.5165, 2.8207, 10.6297, 34.3764]
    ),
    peng!(
        "O",
        [0.0365, 0.1729, 0.5805, 0.8814, 0.3121],
        [0.0652, 0.6184, 2.9449, 9.6298, 28.2194]
    ),
    peng!(
        "F",
        [0.0382, 0.1822, 0.5972, 0.7707, 0.213],
        [0.0613, 0.5753, 2.6858, 8.8214, 25.6668]
    ),
    peng!(
        "Ne",
        [0.038, 0.1785, 0.5494, 0.6942, 0.1918],
        [0.0554, 0.5087, 2.2639, 7.3316, 21.6912]
    ),
    peng!(
        "Na",
        [0.126, 0.6442, 0.8893, 1.8197, 1.2988],
        [0.1684, 1.715, 8.8386, 50.8265, 147.2073]
    ),
    peng!(
        "Mg",
        [0.113, 0.5575, 0.9046, 2.158, 1.4735],
        [0.1356, 1.3579, 6.9255, 32.3165, 92.113]
    ),
    peng!(
        "Al",
        [0.1165, 0.5504, 1.0179, 2.6295, 1.5711],
        [0.1295, 1.2619, 6.8242, 28.4577, 88.475]
    ),
    peng!(
        "Si",
        [0.0567, 0.3365, 0.8104, 2.496, 2.1186],
        [0.0582, 0.6155, 3.2522, 16.7929, 57.6767]
    ),
    peng!(
        "P",
        [0.1005, 0.4615, 1.0663, 2.5854, 1.2725],
        [0.0977, 0.9084, 4.9654, 18.5471, 54.3648]
    ),
    peng!(
        "S",
        [0.0915, 0.4312, 1.0847, 2.4671, 1.0852],
        [0.0838, 0.7788, 4.3462, 15.5846, 44.63655]
    ),
    peng!(
        "Cl",
        [0.0799, 0.3891, 1.0037, 2.3332, 1.0507],
        [0.0694, 0.6443, 3.5351, 12.5058, 35.8633]
    ),
    peng!(
        "Ar",
        [0.1044, 0.4551, 1.4232, 2.1533, 0.4459],
        [0.0853, 0.7701, 4.4684, 14.5864, 41.2474]
    ),
    peng!(
        "K",
        [0.2149, 0.8703, 2.4999, 2.3591, 3.0318],
        [0.166, 1.6906, 8.7447, 46.7825, 165.6923]
    ),
    peng!(
        "Ca",
        [0.2355, 0.9916, 2.3959, 3.7252, 2.5647],
        [0.1742, 1.8329, 8.8407, 47.4583, 134.9613]
    ),
    peng!(
        "Sc",
        [0.4636, 2.0802, 2.9003, 1.4193, 2.4323],
        [0.3682, 4.0312, 22.6493, 71.82, 103.3691]
    ),
    peng!(
        "Ti",
        [0.2123, 0.896, 2.1765, 3.0436, 2.4439],
        [0.1399, 1.4568, 6.7534, 33.1168, 101.8238]
    ),
    peng!(
        "V",
        [0.2369, 1.0774, 2.1894, 3.0825, 1.719],
        [0.1505, 1.6392, 7.5691, 36.8741, 107.8517]
    ),
    peng!(
        "Cr",
        [0.197, 0.8228, 2.02, 2.1717, 1.7516],
        [0.1197, 1.1985, 5.4097, 25.2361, 94.429]
    ),
    peng!(
        "Mn",
        [0.1943, 0.819, 1.9296, 2.4968, 2.0625],
        [0.1135, 1.1313, 5.0341, 24.1798, 80.5598]
    ),
    peng!(
        "Fe",
        [0.1929, 0.8239, 1.8689, 2.3694, 1.906],
        [0.1087, 1.0806, 4.7637, 22.85, 76.7309]
    ),
    peng!(
        "Co",
        [0.2186, 0.9861, 1.854, 2.3258, 1.4685],
        [0.1182, 1.23, 5.4177, 25.7602, 80.8542]
    ),
    peng!(
        "Ni",
        [0.2313, 1.0657, 1.8229, 2.2609, 1.1883],
        [0.121, 1.2691, 5.687, 27.0917, 83.0285]
    ),
    peng!(
        "Cu",
        [0.3501, 1.6558, 1.9582, 0.2134, 1.4109],
        [0.1867, 1.9917, 11.3396, 53.2619, 63.252]
    ),
    peng!(
        "Zn",
        [0.178, 0.8096, 1.6744, 1.9499, 1.4495],
        [0.0876, 0.865, 3.8612, 18.8726, 64.7016]
    ),
    peng!(
        "Se",
        [0.1574, 0.7614, 1.4834, 3.0016, 1.7978],
        [0.0686, 0.6808, 3.1163, 14.3458, 44.0455]
    ),
    peng!(
        "Br",
        [0.1899, 0.8983, 1.6358, 3.1845, 1.15183],
        [0.081, 0.7957, 3.9054, 15.7701, 45.6124]
    ),
    peng!(
        "Mo",
        [0.3069, 1.1714, 3.2293, 3.4254, 2.1224],
        [0.1101, 1.0222, 5.9613, 25.1965, 93.5831]
    ),
    peng!(
        "Cd",
        [0.3072, 1.1303, 3.2046, 2.9329, 1.656],
        [0.0966, 0.8856, 4.6273, 20.6789, 73.4723]
    ),
    peng!(
        "I",
        [0.2617, 1.0325, 2.8097, 4.4809, 2.319],
        [0.0749, 0.6914, 3.4634, 16.3603, 48.2522]
    ),
    peng!(
        "W",
        [0.3661, 1.6191, 3.2455, 4.0856, 3.2064],
        [0.0761, 0.7543, 4.0952, 18.2886, 68.0967]
    ),
    peng!(
        "Pt",
        [0.3083, 1.4158, 2.9662, 3.9349, 2.1709],
        [0.0609, 0.5993, 3.1921, 12.5285, 49.7675]
    ),
    peng!(
        "Au",
        [0.3055, 1.3945, 2.9617, 3.899, 2.0026],
        [0.0596, 0.5827, 3.1035, 11.9693, 47.9106]
    ),
    peng!(
        "Hg",
        [0.3593, 1.5736, 3.5237, 3.8109, 1.6953],
        [0.0694, 0.6758, 3.8457, 15.6203, 56.6614]
    ),
    peng!(
        "Pb",
        [0.354, 1.5453, 3.5975, 4.3152, 2.7743],
        [0.0668, 0.6465, 3.6968, 16.2056, 61.4909]
    ),
    peng!(
        "U",
        [0.641, 2.2643, 4.8713, 5.9287, 5.3935],
        [0.1097, 1.0644, 5.7907, 25.0261, 101.3899]
    ),
];

/// Parameters of element `symbol` (case-insensitive: "FE", "Fe" and "fe" are iron).
pub fn lookup(symbol: &str) -> Option<&'static Peng> {
    TABLE.iter().find(|p| p.symbol.eq_ignore_ascii_case(symbol))
}

/// Vitreous ice: density 0.94 g/cm³ (low-density amorphous ice), 18.015 Da per molecule, 0.60221 Da/Å³ per g/cm³.
pub const ICE_MOLECULES_PER_A3: f64 = 0.94 * 0.602_214 / 18.015;

/// O–H bond length and H···H distance of a water molecule (Å), for the Debye form factor.
const WATER_OH: f64 = 0.9572;
const WATER_HH: f64 = 1.5139;

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-8 {
        1.0
    } else {
        x.sin() / x
    }
}

/// Orientation-averaged |f_water(q)|² (Å²) of one water molecule (Debye formula with neutral-atom factors).
pub fn water_form_factor_sq(q: f64) -> f64 {
    let (o, h) = (
        lookup("O").expect("O in table"),
        lookup("H").expect("H in table"),
    );
    let (fo, fh) = (o.f(q), h.f(q));
    let k = 2.0 * std::f64::consts::PI * q;
    fo * fo
        + 2.0 * fh * fh
        + 4.0 * fo * fh * sinc(k * WATER_OH)
        + 2.0 * fh * fh * sinc(k * WATER_HH)
}

/// Mean inner potential of vitreous ice (V) from the same neutral-atom factors: 2π a₀ e · n · f_water(0).
pub fn ice_mean_potential() -> f64 {
    TWO_PI_A0_E * ICE_MOLECULES_PER_A3 * water_form_factor_sq(0.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_kirkland() {
        // Kirkland quotes 2π a₀ e = 47.878 V·Å².
        assert!((TWO_PI_A0_E - 47.878).abs() < 1e-3, "{TWO_PI_A0_E}");
    }

    #[test]
    fn carbon_f0_and_lookup() {
        let c = lookup("c").unwrap();
        // f_e(0) of carbon is 2.509 Å (sum of Peng's a_i).
        assert!((c.f0() - 2.5092).abs() < 1e-4);
        assert!((c.f(0.0) - c.f0()).abs() < 1e-12);
        assert!(c.f(1.0) < c.f0());
        assert!(lookup("Xx").is_none());
    }

    #[test]
    fn ice_potential_is_physical() {
        // Measured mean inner potentials of amorphous ice are 3.5–4.9 V; neutral atoms give the upper end.
        let v = ice_mean_potential();
        assert!((4.0..5.0).contains(&v), "{v}");
    }
}
