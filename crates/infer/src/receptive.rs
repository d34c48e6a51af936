//! How far an output pixel of each architecture sees: the default tile context, computed rather than guessed.
//!
//! Each layer maps the interval of positions an output needs back to the interval its input needs:
//! a k×k conv widens it by `k/2` on each side, a 2×2 max-pool maps `[a, b]` to `[2a, 2b+1]`, a 2×2 stride-2
//! transposed conv and a 2× nearest upsampling map it to `[⌊a/2⌋, ⌊b/2⌋]`, and a concatenation takes the union
//! of its branches. Following every path from the output back to the input for each position of one pooling
//! period gives the exact extent, so a tile whose context is at least [`context_radius`] (and whose origin is a
//! multiple of [`alignment`]) computes exactly what the whole image computes.

use cryoden_nn::Arch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    lo: i64,
    hi: i64,
}

impl Span {
    fn conv(self, k: usize) -> Span {
        let r = (k / 2) as i64;
        Span {
            lo: self.lo - r,
            hi: self.hi + r,
        }
    }
    /// Back through a 2×2 max-pool: from the pooled map to the map before pooling.
    fn unpool(self) -> Span {
        Span {
            lo: 2 * self.lo,
            hi: 2 * self.hi + 1,
        }
    }
    /// Back through a 2× upsampling (transposed conv 2×2 stride 2, or nearest): to the coarser map.
    fn downsample(self) -> Span {
        Span {
            lo: self.lo.div_euclid(2),
            hi: self.hi.div_euclid(2),
        }
    }
    fn union(self, o: Span) -> Span {
        Span {
            lo: self.lo.min(o.lo),
            hi: self.hi.max(o.hi),
        }
    }
}

/// The input span an interval of the U-Net's level-`l` encoder input `x_l` depends on.
fn unet_enc_to_input(l: usize, s: Span) -> Span {
    if l == 0 {
        return s;
    }
    // x_l = pool(e_{l-1}), e_{l-1} = conv3(conv3(x_{l-1})).
    unet_enc_to_input(l - 1, s.unpool().conv(3).conv(3))
}

/// The input span of an interval of decoder output `d_l` (level `l` of a U-Net with `depth` levels).
fn unet_dec_to_input(l: usize, depth: usize, s: Span) -> Span {
    if l == depth - 1 {
        // The bottom: d = conv3(conv3(x_{D-1})).
        return unet_enc_to_input(l, s.conv(3).conv(3));
    }
    // d_l = conv3(conv3(cat_l)), cat_l = [up(d_{l+1}), e_l], e_l = conv3(conv3(x_l)).
    let c = s.conv(3).conv(3);
    let skip = unet_enc_to_input(l, c.conv(3).conv(3));
    let up = unet_dec_to_input(l + 1, depth, c.downsample());
    skip.union(up)
}

/// Topaz: the span at the input of an interval at level `i`'s pooled map `p_i` (`p_0` = the input).
fn topaz_p_to_input(i: usize, s: Span) -> Span {
    if i == 0 {
        return s;
    }
    // p_i = pool(c_i), c_i = conv(p_{i-1}) with 11×11 for enc1, else 3×3.
    let k = if i == 1 { 11 } else { 3 };
    topaz_p_to_input(i - 1, s.unpool().conv(k))
}

/// Topaz: the input span of an interval of `h_j` (decoder output at level `j-1`; `h_{P+1}` is the bottom).
fn topaz_h_to_input(j: usize, pools: usize, s: Span) -> Span {
    if j == pools + 1 {
        return topaz_p_to_input(pools, s.conv(3));
    }
    // h_j = conv3(conv3(cat_j)), cat_j = [nearest(h_{j+1}), p_{j-1}].
    let c = s.conv(3).conv(3);
    topaz_p_to_input(j - 1, c).union(topaz_h_to_input(j + 1, pools, c.downsample()))
}

/// Tile origins must be multiples of this (`2^pools`), so that the pooling grid of a tile is the image's.
pub fn alignment(arch: &Arch) -> usize {
    match arch {
        Arch::Unet { widths } => 1 << (widths.len() - 1),
        Arch::TopazUnet => 1 << 5,
        Arch::TopazUnetSmall => 1 << 3,
    }
}

/// The largest distance, over all output positions, from an output pixel to an input pixel it depends on.
pub fn context_radius(arch: &Arch) -> usize {
    let period = alignment(arch) as i64;
    let mut r = 0i64;
    for x in 0..period {
        let s = Span { lo: x, hi: x };
        let span = match arch {
            // out = conv1×1(d_0).
            Arch::Unet { widths } => unet_dec_to_input(0, widths.len(), s),
            // out = conv5(conv5(conv5(cat_1))), cat_1 = [nearest(h_2), x].
            Arch::TopazUnet | Arch::TopazUnetSmall => {
                let pools = if *arch == Arch::TopazUnet { 5 } else { 3 };
                let c = s.conv(5).conv(5).conv(5);
                c.union(topaz_h_to_input(2, pools, c.downsample()))
            }
        };
        r = r.max(x - span.lo).max(span.hi - x);
    }
    r as usize
}

/// The default context: the receptive radius rounded up to the alignment.
pub fn default_context(arch: &Arch) -> usize {
    let a = alignment(arch);
    context_radius(arch).div_ceil(a) * a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_level_unet_radius_by_hand() {
        // widths [a, b]: d_0 = conv(conv(cat_0)), cat_0 = [up(d_1), e_0]; e_0 = conv(conv(x)) → radius 4 via the
        // skip; via the bottom: x=0 needs cat_0 [-2, 2] → d_1 [-1, 1] → x_1 [-3, 3] → e_0 [-6, 7] → x [-8, 9].
        // For x = 1: cat_0 [-1, 3] → d_1 [-1, 1] → the same [-8, 9]: radius max(9, 9) = 9.
        let arch = Arch::Unet { widths: vec![4, 8] };
        assert_eq!(context_radius(&arch), 9);
        assert_eq!(alignment(&arch), 2);
        assert_eq!(default_context(&arch), 10);
    }

    #[test]
    fn radii_grow_with_depth_and_topaz_is_far_below_its_500_px_default() {
        let r = |w: &[usize]| context_radius(&Arch::Unet { widths: w.to_vec() });
        assert!(r(&[1, 1, 1]) > r(&[1, 1]));
        assert!(r(&[1, 1, 1, 1]) > r(&[1, 1, 1]));
        let t = context_radius(&Arch::TopazUnet);
        assert!(t > 100 && t < 500, "{t}");
        assert!(context_radius(&Arch::TopazUnetSmall) < t);
    }
}
