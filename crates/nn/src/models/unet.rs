//! `unet`: the plan's U-Net with configurable widths `w[0..D)`.
//!
//! ```text
//! level l < D-1:  x_l ─conv3×3+ReLU─► a_l ─conv3×3+ReLU─► e_l (written into cat_l[w_l..2w_l)) ─maxpool─► x_{l+1}
//! level D-1:      x_{D-1} ─conv+ReLU─► a ─conv+ReLU─► d_{D-1}
//! decoder l = D-2 … 0: up_l = ConvTranspose2d(d_{l+1}, 2, stride 2) written into cat_l[0..w_l)  (up FIRST)
//!                      cat_l ─conv3×3+ReLU─► b_l ─conv3×3+ReLU─► d_l
//! out = conv1×1(d_0)   (w_0 → 1)
//! ```
//! Parameter names: `enc{l}.conv1.weight`, `enc{l}.conv2.bias`, `up{l}.weight` `[in, out, 2, 2]`,
//! `dec{l}.conv1.*`, `dec{l}.conv2.*`, `out.weight`, `out.bias`.

use super::{
    nearest_multiples, ref_mut, two_mut, Activations, Arch, ConvLayer, InputGrad, Plan, TensorSpec,
};
use crate::backend::{Activation, Backend};
use crate::params::{ParamKind, ParamTable};
use crate::shape::{ConvTGeom, Dims, PoolGeom, View};
use crate::{NnError, Result};

#[derive(Clone, Debug)]
struct Up {
    cin: usize,
    cout: usize,
    w: usize,
    b: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct Unet {
    widths: Vec<usize>,
    enc: Vec<[ConvLayer; 2]>,
    up: Vec<Up>,
    dec: Vec<[ConvLayer; 2]>,
    out: ConvLayer,
}

/// Tensor indices in [`Activations`] for one level.
struct Level {
    /// Level input (level 0: the network input; else the pool output).
    x: usize,
    /// After the first conv.
    a: usize,
    /// Encoder output: the concat buffer (levels < D-1, channels [w, 2w)) or the dense bottom output.
    e: usize,
    /// Decoder: after dec conv1, after dec conv2 (levels < D-1 only).
    b: usize,
    d: usize,
}

impl Unet {
    pub fn new(widths: &[usize], t: &mut ParamTable) -> Self {
        let relu = Activation::Relu;
        let d = widths.len();
        let mut enc = Vec::new();
        for (l, &w) in widths.iter().enumerate() {
            let cin = if l == 0 { 1 } else { widths[l - 1] };
            enc.push([
                ConvLayer::new(t, &format!("enc{l}.conv1"), cin, w, 3, relu),
                ConvLayer::new(t, &format!("enc{l}.conv2"), w, w, 3, relu),
            ]);
        }
        let mut up = Vec::new();
        let mut dec = Vec::new();
        for l in 0..d - 1 {
            let (cin, cout) = (widths[l + 1], widths[l]);
            // torch computes ConvTranspose2d's fan_in from weight.size(1) · k · k = cout · 4.
            let fan_in = cout * 4;
            let w = t.push(
                format!("up{l}.weight"),
                &[cin, cout, 2, 2],
                ParamKind::ConvTWeight,
                fan_in,
            );
            let b = t.push(format!("up{l}.bias"), &[cout], ParamKind::Bias, fan_in);
            up.push(Up { cin, cout, w, b });
            dec.push([
                ConvLayer::new(t, &format!("dec{l}.conv1"), 2 * cout, cout, 3, relu),
                ConvLayer::new(t, &format!("dec{l}.conv2"), cout, cout, 3, relu),
            ]);
        }
        let out = ConvLayer::new(t, "out", widths[0], 1, 1, Activation::Identity);
        Unet {
            widths: widths.to_vec(),
            enc,
            up,
            dec,
            out,
        }
    }

    fn depth(&self) -> usize {
        self.widths.len()
    }

    pub fn check_input(&self, arch: &Arch, h: usize, w: usize) -> Result<()> {
        let div = 1usize << (self.depth() - 1);
        if h == 0 || w == 0 || !h.is_multiple_of(div) || !w.is_multiple_of(div) {
            let (h_lo, h_hi) = nearest_multiples(h, div);
            let (w_lo, w_hi) = nearest_multiples(w, div);
            return Err(NnError::InputSize {
                arch: arch.describe(),
                h,
                w,
                divisor: div,
                h_lo,
                h_hi,
                w_lo,
                w_hi,
            });
        }
        Ok(())
    }

    fn level_dims(&self, d: Dims, l: usize) -> Dims {
        Dims::new(d.n, d.h >> l, d.w >> l)
    }

    pub fn flops(&self, d: Dims) -> f64 {
        let mut f = 0.0;
        for l in 0..self.depth() {
            let dl = self.level_dims(d, l);
            f += self.enc[l].iter().map(|c| c.geom(dl).flops()).sum::<f64>();
            if l + 1 < self.depth() {
                f += self.dec[l].iter().map(|c| c.geom(dl).flops()).sum::<f64>();
                let u = &self.up[l];
                f += ConvTGeom {
                    dims: self.level_dims(d, l + 1),
                    cin: u.cin,
                    cout: u.cout,
                }
                .flops();
            }
        }
        f + self.out.geom(d).flops()
    }

    /// Tensor indices; the order here is the allocation order of [`Unet::plan`].
    fn levels(&self) -> (Vec<Level>, usize) {
        let dd = self.depth();
        let mut idx = 0;
        let mut next = || {
            idx += 1;
            idx - 1
        };
        let mut levels = Vec::new();
        for l in 0..dd {
            let x = next();
            let a = next();
            let e = next();
            let (b, d) = if l + 1 < dd {
                (next(), next())
            } else {
                (usize::MAX, e)
            };
            levels.push(Level { x, a, e, b, d });
        }
        let out = next();
        (levels, out)
    }

    pub fn plan(&self, dims: Dims) -> Plan {
        let dd = self.depth();
        let mut tensors = Vec::new();
        for l in 0..dd {
            let dl = self.level_dims(dims, l);
            let w = self.widths[l];
            let cin = if l == 0 { 1 } else { self.widths[l - 1] };
            tensors.push(TensorSpec { dims: dl, c: cin });
            tensors.push(TensorSpec { dims: dl, c: w });
            if l + 1 < dd {
                tensors.push(TensorSpec { dims: dl, c: 2 * w });
                tensors.push(TensorSpec { dims: dl, c: w });
                tensors.push(TensorSpec { dims: dl, c: w });
            } else {
                tensors.push(TensorSpec { dims: dl, c: w });
            }
        }
        tensors.push(TensorSpec { dims, c: 1 });
        let (levels, out) = self.levels();
        let (convs, convts) = self.geoms(dims);
        Plan {
            tensors,
            input: levels[0].x,
            output: out,
            convs,
            convts,
        }
    }

    /// Every conv / transposed-conv geometry, so the caller can size the scratch buffer.
    fn geoms(&self, dims: Dims) -> (Vec<crate::shape::ConvGeom>, Vec<ConvTGeom>) {
        let mut convs = Vec::new();
        let mut convts = Vec::new();
        for l in 0..self.depth() {
            let dl = self.level_dims(dims, l);
            convs.extend(self.enc[l].iter().map(|c| c.geom(dl)));
            if l + 1 < self.depth() {
                convs.extend(self.dec[l].iter().map(|c| c.geom(dl)));
                let u = &self.up[l];
                convts.push(ConvTGeom {
                    dims: self.level_dims(dims, l + 1),
                    cin: u.cin,
                    cout: u.cout,
                });
            }
        }
        convs.push(self.out.geom(dims));
        (convs, convts)
    }

    pub fn forward<B: Backend>(&self, be: &B, p: &B::Buf, acts: &mut Activations<B>) -> Result<()> {
        let dims = acts.dims();
        let dd = self.depth();
        let (lv, out) = self.levels();
        let Activations { vals, ws, .. } = acts;
        // Encoder.
        for l in 0..dd {
            let dl = self.level_dims(dims, l);
            let w = self.widths[l];
            let cin = self.enc[l][0].cin;
            let (x, a) = ref_mut(vals, lv[l].x, lv[l].a);
            self.enc[l][0].forward(be, dl, p, x, View::dense(cin), a, View::dense(w), ws)?;
            // e_l goes straight into the second half of the concat buffer (or a dense buffer at the bottom).
            let ev = self.skip_view(l);
            let (a, e) = ref_mut(vals, lv[l].a, lv[l].e);
            self.enc[l][1].forward(be, dl, p, a, View::dense(w), e, ev, ws)?;
            if l + 1 < dd {
                let (e, x1) = ref_mut(vals, lv[l].e, lv[l + 1].x);
                be.maxpool2_forward(&PoolGeom { dims: dl, c: w }, e, ev, x1, View::dense(w))?;
            }
        }
        // Decoder.
        for l in (0..dd - 1).rev() {
            let dl = self.level_dims(dims, l);
            let w = self.widths[l];
            let u = &self.up[l];
            let g = ConvTGeom {
                dims: self.level_dims(dims, l + 1),
                cin: u.cin,
                cout: u.cout,
            };
            let (dn, cat) = ref_mut(vals, lv[l + 1].d, lv[l].e);
            let up_view = View::channels(2 * w, 0);
            be.convt2x2_forward(
                &g,
                dn,
                View::dense(u.cin),
                p,
                u.w,
                Some(u.b),
                Activation::Identity,
                cat,
                up_view,
                ws,
            )?;
            let (cat, b) = ref_mut(vals, lv[l].e, lv[l].b);
            self.dec[l][0].forward(be, dl, p, cat, View::dense(2 * w), b, View::dense(w), ws)?;
            let (b, d) = ref_mut(vals, lv[l].b, lv[l].d);
            self.dec[l][1].forward(be, dl, p, b, View::dense(w), d, View::dense(w), ws)?;
        }
        let (d0, y) = ref_mut(vals, lv[0].d, out);
        self.out.forward(
            be,
            dims,
            p,
            d0,
            View::dense(self.widths[0]),
            y,
            View::dense(1),
            ws,
        )
    }

    /// View of e_l: channels [w, 2w) of cat_l, or the dense bottom tensor.
    fn skip_view(&self, l: usize) -> View {
        let w = self.widths[l];
        if l + 1 < self.depth() {
            View::channels(2 * w, w)
        } else {
            View::dense(w)
        }
    }

    pub fn backward<B: Backend>(
        &self,
        be: &B,
        p: &B::Buf,
        g: &mut B::Buf,
        acts: &mut Activations<B>,
    ) -> Result<()> {
        let dims = acts.dims();
        let dd = self.depth();
        let (lv, out) = self.levels();
        let Activations {
            vals, grads, ws, ..
        } = acts;
        let w0 = self.widths[0];
        // Every ReLU layer's activation backward runs fused into the op that writes its output gradient (the next
        // conv's backward-data, or the pool's backward), except where that gradient comes from the transposed
        // conv (decoder levels ≥ 1 and the bottom): those layers run it themselves (`dy_pre` false).
        // Output conv: d_0 → y, through the activation of the layer that wrote d_0.
        let d0_producer = if dd > 1 {
            &self.dec[0][1]
        } else {
            &self.enc[0][1]
        };
        {
            let (dy, dd0) = two_mut(grads, out, lv[0].d);
            let dx = InputGrad::ThroughAct(dd0, View::dense(w0), d0_producer);
            self.out.backward(
                be,
                dims,
                p,
                g,
                &vals[lv[0].d],
                View::dense(w0),
                &vals[out],
                View::dense(1),
                dy,
                View::dense(1),
                false,
                dx,
                ws,
            )?;
        }
        // Decoder, top to bottom (reverse of the forward's order).
        for l in 0..dd - 1 {
            let dl = self.level_dims(dims, l);
            let w = self.widths[l];
            let dense = View::dense(w);
            let (gd, gb) = two_mut(grads, lv[l].d, lv[l].b);
            self.dec[l][1].backward(
                be,
                dl,
                p,
                g,
                &vals[lv[l].b],
                dense,
                &vals[lv[l].d],
                dense,
                gd,
                dense,
                l == 0,
                InputGrad::ThroughAct(gb, dense, &self.dec[l][0]),
                ws,
            )?;
            let (gb, gcat) = two_mut(grads, lv[l].b, lv[l].e);
            let cat = View::dense(2 * w);
            self.dec[l][0].backward(
                be,
                dl,
                p,
                g,
                &vals[lv[l].e],
                cat,
                &vals[lv[l].b],
                dense,
                gb,
                dense,
                true,
                InputGrad::Into(gcat, cat, false),
                ws,
            )?;
            // Transposed conv: its output is channels [0, w) of cat_l.
            let u = &self.up[l];
            let gt = ConvTGeom {
                dims: self.level_dims(dims, l + 1),
                cin: u.cin,
                cout: u.cout,
            };
            let upv = View::channels(2 * w, 0);
            let (gcat, gdn) = two_mut(grads, lv[l].e, lv[l + 1].d);
            be.convt2x2_backward(
                &gt,
                &vals[lv[l + 1].d],
                View::dense(u.cin),
                &vals[lv[l].e],
                upv,
                gcat,
                upv,
                p,
                u.w,
                g,
                u.w,
                Some(u.b),
                gdn,
                View::dense(u.cin),
                false,
                ws,
            )?;
        }
        // Encoder, bottom to top. The gradient of e_l already holds the decoder's part (from dec conv1's
        // backward-data into cat_l); the pool's part is added to it.
        for l in (0..dd).rev() {
            let dl = self.level_dims(dims, l);
            let w = self.widths[l];
            let ev = self.skip_view(l);
            if l + 1 < dd {
                let pg = PoolGeom { dims: dl, c: w };
                let (gx1, ge) = two_mut(grads, lv[l + 1].x, lv[l].e);
                be.maxpool2_backward_act(
                    &pg,
                    &vals[lv[l].e],
                    ev,
                    &vals[lv[l + 1].x],
                    View::dense(w),
                    gx1,
                    View::dense(w),
                    ge,
                    ev,
                    true,
                    self.enc[l][1].act_backward(),
                    g,
                )?;
            }
            let dense = View::dense(w);
            let (ge, ga) = two_mut(grads, lv[l].e, lv[l].a);
            self.enc[l][1].backward(
                be,
                dl,
                p,
                g,
                &vals[lv[l].a],
                dense,
                &vals[lv[l].e],
                ev,
                ge,
                ev,
                l + 1 < dd || dd == 1,
                InputGrad::ThroughAct(ga, dense, &self.enc[l][0]),
                ws,
            )?;
            let cin = self.enc[l][0].cin;
            let xv = View::dense(cin);
            if l > 0 {
                let (ga, gx) = two_mut(grads, lv[l].a, lv[l].x);
                self.enc[l][0].backward(
                    be,
                    dl,
                    p,
                    g,
                    &vals[lv[l].x],
                    xv,
                    &vals[lv[l].a],
                    dense,
                    ga,
                    dense,
                    true,
                    InputGrad::Into(gx, xv, false),
                    ws,
                )?;
            } else {
                let ga = &mut grads[lv[l].a];
                self.enc[l][0].backward(
                    be,
                    dl,
                    p,
                    g,
                    &vals[lv[l].x],
                    xv,
                    &vals[lv[l].a],
                    dense,
                    ga,
                    dense,
                    true,
                    InputGrad::None,
                    ws,
                )?;
            }
        }
        Ok(())
    }
}
