//! `topaz-unet` / `topaz-unet-small`: Topaz 0.3.20's `UDenoiseNet` / `UDenoiseNetSmall`, layer for layer
//! (topaz/denoising/models.py), with Topaz's state_dict names so its weights load by name.
//!
//! With `P` pools (5 for UDenoiseNet, 3 for the small one), `nf = 48`:
//! ```text
//! enc1 = conv 11×11 (1→nf) + LeakyReLU(0.1), maxpool 2      c_1 → p_1
//! enc_i (2 ≤ i ≤ P) = conv 3×3 (nf→nf) + LReLU, maxpool 2    c_i → p_i
//! enc_{P+1} = conv 3×3 (nf→nf) + LReLU                        h_{P+1}
//! dec_j (j = P … 2): cat_j = [nearest(h_{j+1}, size of p_{j-1}), p_{j-1}]
//!                    conv 3×3 (c→2nf) + LReLU, conv 3×3 (2nf→2nf) + LReLU → h_j    (c = 2nf for j = P, else 3nf)
//! dec1: cat_1 = [nearest(h_2, size of x), x]  (2nf+1 channels)
//!       conv 5×5 (2nf+1→64) + LReLU, conv 5×5 (64→32) + LReLU, conv 5×5 (32→1)
//! ```
//! Max-pooling floors odd sizes, and the nearest upsampling goes back to the skip's exact size, so any input of at
//! least 2^P pixels a side works.

use super::{two_mut, Activations, Arch, ConvLayer, InputGrad, Plan, TensorSpec};
use crate::backend::{Activation, Backend};
use crate::params::ParamTable;
use crate::shape::{ConvGeom, Dims, PoolGeom, UpsampleGeom, View};
use crate::{NnError, Result};

const SLOPE: f32 = 0.1;

#[derive(Clone, Debug)]
pub(crate) struct Topaz {
    pools: usize,
    nf: usize,
    /// enc[i-1] is Topaz's enc{i}, i = 1 ..= P+1.
    enc: Vec<ConvLayer>,
    /// dec[j-2] is Topaz's dec{j}, j = 2 ..= P.
    dec: Vec<[ConvLayer; 2]>,
    dec1: [ConvLayer; 3],
}

/// Tensor indices.
struct Idx {
    x: usize,
    /// c[i-1]: enc_i conv output (before pooling), i = 1..=P.
    c: Vec<usize>,
    /// p[i-1]: pool output of enc_i. For i < P it lives in cat[i] (cat of dec_{i+1}), channels [c_up, c_up+nf).
    p: Vec<usize>,
    /// Output of enc_{P+1}.
    h_bottom: usize,
    /// cat[j-1], a[j-1], h[j-1] for dec_j, j = 1..=P (index 0 = dec1: cat_1, a = after conv 0, h = after conv 2).
    cat: Vec<usize>,
    a: Vec<usize>,
    h: Vec<usize>,
    /// dec1's second conv output (32 channels) and the network output.
    b1: usize,
    y: usize,
}

impl Topaz {
    pub fn new(
        pools: usize,
        nf: usize,
        base_width: usize,
        top_width: usize,
        t: &mut ParamTable,
    ) -> Self {
        let lrelu = Activation::LeakyRelu(SLOPE);
        let mut enc = Vec::new();
        for i in 1..=pools + 1 {
            let (cin, k) = if i == 1 { (1, base_width) } else { (nf, 3) };
            enc.push(ConvLayer::new(t, &format!("enc{i}.0"), cin, nf, k, lrelu));
        }
        let mut dec = Vec::new();
        for j in (2..=pools).rev() {
            let cin = if j == pools { 2 * nf } else { 3 * nf };
            dec.push([
                ConvLayer::new(t, &format!("dec{j}.0"), cin, 2 * nf, 3, lrelu),
                ConvLayer::new(t, &format!("dec{j}.2"), 2 * nf, 2 * nf, 3, lrelu),
            ]);
        }
        dec.reverse(); // dec[j-2] = dec_j; registration above follows Topaz's module order (dec5 first).
        let dec1 = [
            ConvLayer::new(t, "dec1.0", 2 * nf + 1, 64, top_width, lrelu),
            ConvLayer::new(t, "dec1.2", 64, 32, top_width, lrelu),
            ConvLayer::new(t, "dec1.4", 32, 1, top_width, Activation::Identity),
        ];
        Topaz {
            pools,
            nf,
            enc,
            dec,
            dec1,
        }
    }

    pub fn check_input(&self, arch: &Arch, h: usize, w: usize) -> Result<()> {
        let min = 1usize << self.pools;
        if h < min || w < min {
            return Err(NnError::InputTooSmall {
                arch: arch.describe(),
                h,
                w,
                min,
            });
        }
        Ok(())
    }

    /// dims of level `l` (after `l` floor-halvings).
    fn level(d: Dims, l: usize) -> Dims {
        Dims::new(d.n, d.h >> l, d.w >> l)
    }

    /// Channels of the upsampled part of cat_j.
    fn c_up(&self, j: usize) -> usize {
        if j == self.pools {
            self.nf
        } else {
            2 * self.nf
        }
    }
    /// Total channels of cat_j.
    fn c_cat(&self, j: usize) -> usize {
        if j == 1 {
            2 * self.nf + 1
        } else {
            self.c_up(j) + self.nf
        }
    }

    fn indices(&self) -> Idx {
        let p = self.pools;
        let mut n = 0;
        let mut next = || {
            n += 1;
            n - 1
        };
        let x = next();
        let c: Vec<usize> = (0..p).map(|_| next()).collect();
        let cat: Vec<usize> = (0..p).map(|_| next()).collect();
        let a: Vec<usize> = (0..p).map(|_| next()).collect();
        let h: Vec<usize> = (0..p).map(|_| next()).collect();
        let p_last = next();
        let h_bottom = next();
        let b1 = next();
        let y = next();
        // p_i (i < P) lives in cat_{i+1}; p_P is its own tensor.
        let mut pv: Vec<usize> = (1..p).map(|i| cat[i]).collect();
        pv.push(p_last);
        Idx {
            x,
            c,
            p: pv,
            h_bottom,
            cat,
            a,
            h,
            b1,
            y,
        }
    }

    /// View of p_i.
    fn p_view(&self, i: usize) -> View {
        if i < self.pools {
            View::channels(self.c_cat(i + 1), self.c_up(i + 1))
        } else {
            View::dense(self.nf)
        }
    }

    fn geoms(&self, d: Dims) -> Vec<ConvGeom> {
        let mut g = Vec::new();
        for (i, e) in self.enc.iter().enumerate() {
            g.push(e.geom(Self::level(d, i)));
        }
        for (jm2, dj) in self.dec.iter().enumerate() {
            let dl = Self::level(d, jm2 + 1);
            g.extend(dj.iter().map(|c| c.geom(dl)));
        }
        g.extend(self.dec1.iter().map(|c| c.geom(d)));
        g
    }

    pub fn flops(&self, d: Dims) -> f64 {
        self.geoms(d).iter().map(ConvGeom::flops).sum()
    }

    pub fn plan(&self, d: Dims) -> Plan {
        let p = self.pools;
        let nf = self.nf;
        let ix = self.indices();
        let mut t = vec![TensorSpec { dims: d, c: 0 }; ix.y + 1];
        t[ix.x] = TensorSpec { dims: d, c: 1 };
        for i in 1..=p {
            t[ix.c[i - 1]] = TensorSpec {
                dims: Self::level(d, i - 1),
                c: nf,
            };
        }
        for j in 1..=p {
            let dl = Self::level(d, j - 1);
            t[ix.cat[j - 1]] = TensorSpec {
                dims: dl,
                c: self.c_cat(j),
            };
            let (ca, ch) = if j == 1 { (64, 32) } else { (2 * nf, 2 * nf) };
            t[ix.a[j - 1]] = TensorSpec { dims: dl, c: ca };
            t[ix.h[j - 1]] = TensorSpec { dims: dl, c: ch };
        }
        // dec1's h slot is unused by name; b1 holds its 32-channel output. Keep the slot tiny.
        t[ix.h[0]] = TensorSpec {
            dims: Dims::new(0, 0, 0),
            c: 0,
        };
        t[ix.p[p - 1]] = TensorSpec {
            dims: Self::level(d, p),
            c: nf,
        };
        t[ix.h_bottom] = TensorSpec {
            dims: Self::level(d, p),
            c: nf,
        };
        t[ix.b1] = TensorSpec { dims: d, c: 32 };
        t[ix.y] = TensorSpec { dims: d, c: 1 };
        Plan {
            tensors: t,
            input: ix.x,
            output: ix.y,
            convs: self.geoms(d),
            convts: Vec::new(),
        }
    }

    /// (tensor, view, channels) of the decoder input to upsample into cat_j: h_{j+1}, or the bottom.
    fn up_src(&self, ix: &Idx, j: usize) -> (usize, usize) {
        if j == self.pools {
            (ix.h_bottom, self.nf)
        } else {
            (ix.h[j], 2 * self.nf)
        }
    }

    pub fn forward<B: Backend>(
        &self,
        be: &B,
        prm: &B::Buf,
        acts: &mut Activations<B>,
    ) -> Result<()> {
        let d = acts.dims();
        let p = self.pools;
        let nf = self.nf;
        let ix = self.indices();
        let Activations { vals, ws, .. } = acts;
        let dn = View::dense(nf);
        // Encoder.
        for i in 1..=p {
            let dl = Self::level(d, i - 1);
            let (xi, xv) = if i == 1 {
                (ix.x, View::dense(1))
            } else {
                (ix.p[i - 2], self.p_view(i - 1))
            };
            let (x, c) = super::ref_mut(vals, xi, ix.c[i - 1]);
            self.enc[i - 1].forward(be, dl, prm, x, xv, c, dn, ws)?;
            let (c, pi) = super::ref_mut(vals, ix.c[i - 1], ix.p[i - 1]);
            be.maxpool2_forward(&PoolGeom { dims: dl, c: nf }, c, dn, pi, self.p_view(i))?;
        }
        let (pp, hb) = super::ref_mut(vals, ix.p[p - 1], ix.h_bottom);
        self.enc[p].forward(be, Self::level(d, p), prm, pp, dn, hb, dn, ws)?;
        // Decoder.
        for j in (1..=p).rev() {
            let dl = Self::level(d, j - 1);
            let (src, c_src) = self.up_src(&ix, j);
            let cc = self.c_cat(j);
            let ug = UpsampleGeom {
                dims: Self::level(d, j),
                c: c_src,
                oh: dl.h,
                ow: dl.w,
            };
            let (s, cat) = super::ref_mut(vals, src, ix.cat[j - 1]);
            be.upsample_nearest_forward(&ug, s, View::dense(c_src), cat, View::channels(cc, 0))?;
            if j == 1 {
                let (x, cat) = super::ref_mut(vals, ix.x, ix.cat[0]);
                be.copy_channels(
                    d.pixels(),
                    1,
                    x,
                    View::dense(1),
                    cat,
                    View::channels(cc, 2 * nf),
                    false,
                )?;
                let l = &self.dec1;
                let (cat, a) = super::ref_mut(vals, ix.cat[0], ix.a[0]);
                l[0].forward(be, d, prm, cat, View::dense(cc), a, View::dense(64), ws)?;
                let (a, b) = super::ref_mut(vals, ix.a[0], ix.b1);
                l[1].forward(be, d, prm, a, View::dense(64), b, View::dense(32), ws)?;
                let (b, y) = super::ref_mut(vals, ix.b1, ix.y);
                l[2].forward(be, d, prm, b, View::dense(32), y, View::dense(1), ws)?;
            } else {
                let l = &self.dec[j - 2];
                let d2 = View::dense(2 * nf);
                let (cat, a) = super::ref_mut(vals, ix.cat[j - 1], ix.a[j - 1]);
                l[0].forward(be, dl, prm, cat, View::dense(cc), a, d2, ws)?;
                let (a, h) = super::ref_mut(vals, ix.a[j - 1], ix.h[j - 1]);
                l[1].forward(be, dl, prm, a, d2, h, d2, ws)?;
            }
        }
        Ok(())
    }

    pub fn backward<B: Backend>(
        &self,
        be: &B,
        prm: &B::Buf,
        g: &mut B::Buf,
        acts: &mut Activations<B>,
    ) -> Result<()> {
        let d = acts.dims();
        let p = self.pools;
        let nf = self.nf;
        let ix = self.indices();
        let Activations {
            vals, grads, ws, ..
        } = acts;
        // Decoder, top first.
        for j in 1..=p {
            let dl = Self::level(d, j - 1);
            let cc = self.c_cat(j);
            let catv = View::dense(cc);
            if j == 1 {
                let l = &self.dec1;
                let (v1, v32, v64) = (View::dense(1), View::dense(32), View::dense(64));
                let (gy, gb) = two_mut(grads, ix.y, ix.b1);
                l[2].backward(
                    be,
                    d,
                    prm,
                    g,
                    &vals[ix.b1],
                    v32,
                    &vals[ix.y],
                    v1,
                    gy,
                    v1,
                    false,
                    InputGrad::Into(gb, v32, false),
                    ws,
                )?;
                let (gb, ga) = two_mut(grads, ix.b1, ix.a[0]);
                l[1].backward(
                    be,
                    d,
                    prm,
                    g,
                    &vals[ix.a[0]],
                    v64,
                    &vals[ix.b1],
                    v32,
                    gb,
                    v32,
                    false,
                    InputGrad::Into(ga, v64, false),
                    ws,
                )?;
                let (ga, gc) = two_mut(grads, ix.a[0], ix.cat[0]);
                l[0].backward(
                    be,
                    d,
                    prm,
                    g,
                    &vals[ix.cat[0]],
                    catv,
                    &vals[ix.a[0]],
                    v64,
                    ga,
                    v64,
                    false,
                    InputGrad::Into(gc, catv, false),
                    ws,
                )?;
            } else {
                let l = &self.dec[j - 2];
                let d2 = View::dense(2 * nf);
                let (gh, ga) = two_mut(grads, ix.h[j - 1], ix.a[j - 1]);
                l[1].backward(
                    be,
                    dl,
                    prm,
                    g,
                    &vals[ix.a[j - 1]],
                    d2,
                    &vals[ix.h[j - 1]],
                    d2,
                    gh,
                    d2,
                    false,
                    InputGrad::Into(ga, d2, false),
                    ws,
                )?;
                let (ga, gc) = two_mut(grads, ix.a[j - 1], ix.cat[j - 1]);
                l[0].backward(
                    be,
                    dl,
                    prm,
                    g,
                    &vals[ix.cat[j - 1]],
                    catv,
                    &vals[ix.a[j - 1]],
                    d2,
                    ga,
                    d2,
                    false,
                    InputGrad::Into(gc, catv, false),
                    ws,
                )?;
            }
            let (src, c_src) = self.up_src(&ix, j);
            let ug = UpsampleGeom {
                dims: Self::level(d, j),
                c: c_src,
                oh: dl.h,
                ow: dl.w,
            };
            let (gc, gs) = two_mut(grads, ix.cat[j - 1], src);
            be.upsample_nearest_backward(
                &ug,
                gc,
                View::channels(cc, 0),
                gs,
                View::dense(c_src),
                false,
            )?;
        }
        // Bottom conv: its input p_P is dense.
        let dn = View::dense(nf);
        {
            let (gh, gp) = two_mut(grads, ix.h_bottom, ix.p[p - 1]);
            let x = &vals[ix.p[p - 1]];
            self.enc[p].backward(
                be,
                Self::level(d, p),
                prm,
                g,
                x,
                dn,
                &vals[ix.h_bottom],
                dn,
                gh,
                dn,
                false,
                InputGrad::Into(gp, dn, false),
                ws,
            )?;
        }
        // Encoder, bottom first. The gradient of p_i (i < P) already holds the decoder's part (written by dec_{i+1}
        // conv 0's backward-data into cat_{i+1}); enc_{i+1}'s part was added to it one iteration earlier.
        for i in (1..=p).rev() {
            let dl = Self::level(d, i - 1);
            let pg = PoolGeom { dims: dl, c: nf };
            let pv = self.p_view(i);
            let (gp, gc) = two_mut(grads, ix.p[i - 1], ix.c[i - 1]);
            be.maxpool2_backward(
                &pg,
                &vals[ix.c[i - 1]],
                dn,
                &vals[ix.p[i - 1]],
                pv,
                gp,
                pv,
                gc,
                dn,
                false,
            )?;
            if i == 1 {
                let gc = &mut grads[ix.c[0]];
                self.enc[0].backward(
                    be,
                    dl,
                    prm,
                    g,
                    &vals[ix.x],
                    View::dense(1),
                    &vals[ix.c[0]],
                    dn,
                    gc,
                    dn,
                    false,
                    InputGrad::None,
                    ws,
                )?;
            } else {
                let xv = self.p_view(i - 1);
                let (gc, gx) = two_mut(grads, ix.c[i - 1], ix.p[i - 2]);
                let x = &vals[ix.p[i - 2]];
                self.enc[i - 1].backward(
                    be,
                    dl,
                    prm,
                    g,
                    x,
                    xv,
                    &vals[ix.c[i - 1]],
                    dn,
                    gc,
                    dn,
                    false,
                    InputGrad::Into(gx, xv, true),
                    ws,
                )?;
            }
        }
        Ok(())
    }
}
