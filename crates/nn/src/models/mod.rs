//! The networks: `unet` (the plan's U-Net), `topaz-unet` and `topaz-unet-small` (Topaz 0.3.20's UDenoiseNet and
//! UDenoiseNetSmall). Each is written once against [`Backend`] with an explicit forward and backward that call
//! per-layer pairs (conv forward ↔ bias/act backward + filter + data, pool ↔ pool backward, ...).
//!
//! A [`Model`] is backend-independent: the architecture and its [`ParamTable`]. The per-batch-shape buffers
//! (activations, their gradients, scratch) live in [`Activations`], allocated once per input size.

mod topaz;
mod unet;

use crate::backend::{ActBackward, Activation, Backend, BufKind};
use crate::params::ParamTable;
use crate::shape::{ConvGeom, Dims, View};
use crate::{NnError, Result};

/// Which network. Serialised into checkpoint metadata as `{"name": "unet", "widths": [...]}` etc.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Arch {
    /// The plan's U-Net: per level two 3×3 conv + ReLU, 2×2 max-pool, 2×2 transposed-conv upsampling,
    /// concatenated skips, 1×1 output conv. `widths` has one entry per level (≥ 2 levels).
    Unet { widths: Vec<usize> },
    /// Topaz 0.3.20 `UDenoiseNet(nf=48, base_width=11, top_width=5)` (the `unet` pretrained model).
    TopazUnet,
    /// Topaz 0.3.20 `UDenoiseNetSmall(nf=48, width=11, top_width=5)` (the `unet-small` pretrained model).
    TopazUnetSmall,
}

/// Default widths of `unet`.
pub const DEFAULT_UNET_WIDTHS: [usize; 4] = [32, 64, 128, 256];

impl Arch {
    /// Parses a command-line name (`unet`, `topaz-unet`, `topaz-unet-small`) and optional widths (only `unet`
    /// takes widths; `None` gives the default 32,64,128,256).
    pub fn from_name(name: &str, widths: Option<&[usize]>) -> Result<Arch> {
        let arch = match name {
            "unet" => Arch::Unet {
                widths: widths.map_or(DEFAULT_UNET_WIDTHS.to_vec(), <[usize]>::to_vec),
            },
            "topaz-unet" | "topaz-unet-small" if widths.is_some() => {
                return Err(NnError::Arch(format!(
                    "{name} has fixed widths (Topaz's); drop --widths"
                )))
            }
            "topaz-unet" => Arch::TopazUnet,
            "topaz-unet-small" => Arch::TopazUnetSmall,
            other => {
                return Err(NnError::Arch(format!(
                    "unknown architecture {other:?}: choose unet, topaz-unet or topaz-unet-small"
                )))
            }
        };
        arch.validate()?;
        Ok(arch)
    }
    /// Command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Unet { .. } => "unet",
            Arch::TopazUnet => "topaz-unet",
            Arch::TopazUnetSmall => "topaz-unet-small",
        }
    }
    /// `unet[32,64,128,256]`, `topaz-unet`: for messages.
    pub fn describe(&self) -> String {
        match self {
            Arch::Unet { widths } => {
                let w: Vec<String> = widths.iter().map(usize::to_string).collect();
                format!("unet[{}]", w.join(","))
            }
            other => other.name().to_string(),
        }
    }
    fn validate(&self) -> Result<()> {
        if let Arch::Unet { widths } = self {
            if widths.len() < 2 {
                return Err(NnError::Arch(format!(
                    "unet needs at least 2 widths, got {widths:?}"
                )));
            }
            if widths.contains(&0) {
                return Err(NnError::Arch(format!(
                    "unet widths must be positive, got {widths:?}"
                )));
            }
        }
        Ok(())
    }
}

/// A network: architecture + parameter table. Cheap to build; holds no weights (those live in a backend buffer
/// laid out by [`Model::params`]).
#[derive(Clone, Debug)]
pub struct Model {
    arch: Arch,
    table: ParamTable,
    net: Net,
}

#[derive(Clone, Debug)]
enum Net {
    Unet(unet::Unet),
    Topaz(topaz::Topaz),
}

impl Model {
    pub fn new(arch: Arch) -> Result<Model> {
        arch.validate()?;
        let mut table = ParamTable::new();
        let net = match &arch {
            Arch::Unet { widths } => Net::Unet(unet::Unet::new(widths, &mut table)),
            Arch::TopazUnet => Net::Topaz(topaz::Topaz::new(5, 48, 11, 5, &mut table)),
            Arch::TopazUnetSmall => Net::Topaz(topaz::Topaz::new(3, 48, 11, 5, &mut table)),
        };
        Ok(Model { arch, table, net })
    }
    pub fn arch(&self) -> &Arch {
        &self.arch
    }
    /// The table of named parameter slices (PyTorch names and shapes).
    pub fn params(&self) -> &ParamTable {
        &self.table
    }
    /// PyTorch-default initial parameters (flat, internal layout) from `seed`.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        self.table.init(seed)
    }
    /// Checks that an `h × w` input fits; the error names the nearest valid sizes.
    pub fn check_input(&self, h: usize, w: usize) -> Result<()> {
        match &self.net {
            Net::Unet(u) => u.check_input(&self.arch, h, w),
            Net::Topaz(t) => t.check_input(&self.arch, h, w),
        }
    }
    /// Forward FLOPs (2 × multiply-adds of convs and transposed convs) for `n` images of `h × w`.
    /// A training step is about 3× this (forward + backward-data + backward-filter).
    pub fn forward_flops(&self, n: usize, h: usize, w: usize) -> f64 {
        let d = Dims::new(n, h, w);
        match &self.net {
            Net::Unet(u) => u.flops(d),
            Net::Topaz(t) => t.flops(d),
        }
    }
    /// Allocates the activations, their gradients and the scratch space for `n` images of `h × w`.
    pub fn activations<B: Backend>(
        &self,
        be: &B,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Activations<B>> {
        let (dims, plan) = self.plan(n, h, w)?;
        Activations::alloc(be, dims, plan, true)
    }
    /// Allocates what a forward pass alone needs for `n` images of `h × w`: the activations and the scratch
    /// space, no gradients and no target (about half the memory of [`Model::activations`]). For inference;
    /// [`Model::backward`] refuses these.
    pub fn inference_activations<B: Backend>(
        &self,
        be: &B,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Activations<B>> {
        let (dims, plan) = self.plan(n, h, w)?;
        Activations::alloc(be, dims, plan, false)
    }
    fn plan(&self, n: usize, h: usize, w: usize) -> Result<(Dims, Plan)> {
        self.check_input(h, w)?;
        let dims = Dims::new(n, h, w);
        let plan = match &self.net {
            Net::Unet(u) => u.plan(dims),
            Net::Topaz(t) => t.plan(dims),
        };
        Ok((dims, plan))
    }
    /// Forward pass: reads the input uploaded with [`Activations::upload_input`], leaves the output in
    /// [`Activations::output`] and keeps every intermediate for [`Model::backward`].
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        params: &B::Buf,
        acts: &mut Activations<B>,
    ) -> Result<()> {
        self.check_params(be, params)?;
        match &self.net {
            Net::Unet(u) => u.forward(be, params, acts),
            Net::Topaz(t) => t.forward(be, params, acts),
        }
    }
    /// Backward pass: reads the output gradient ([`Activations::doutput_mut`], written by the loss), ACCUMULATES
    /// parameter gradients into `grads` (same layout as `params`; zero it before the step). No input gradient.
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        acts: &mut Activations<B>,
    ) -> Result<()> {
        self.check_params(be, params)?;
        self.check_params(be, grads)?;
        if !acts.trainable {
            return Err(NnError::Shape {
                op: "backward",
                msg: "these activations were allocated by Model::inference_activations (no gradients); \
                      use Model::activations for training"
                    .into(),
            });
        }
        match &self.net {
            Net::Unet(u) => u.backward(be, params, grads, acts),
            Net::Topaz(t) => t.backward(be, params, grads, acts),
        }
    }
    fn check_params<B: Backend>(&self, be: &B, buf: &B::Buf) -> Result<()> {
        self.table
            .check_len("parameter/gradient buffer", be.len(buf))
    }
}

/// Shape of one activation tensor: its dims and channel count (its gradient has the same shape).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TensorSpec {
    pub dims: Dims,
    pub c: usize,
}

/// What a model needs allocated for one input size.
pub(crate) struct Plan {
    pub tensors: Vec<TensorSpec>,
    /// Index of the dense 1-channel input tensor and of the 1-channel output tensor.
    pub input: usize,
    pub output: usize,
    /// Every conv and transposed conv, to size the scratch buffer.
    pub convs: Vec<ConvGeom>,
    pub convts: Vec<crate::shape::ConvTGeom>,
}

/// Per-input-size buffers of a model on a backend: every activation (NHWC, dense or concat), a gradient buffer
/// for each, and one scratch buffer. Allocated once; forward/backward never allocate.
pub struct Activations<B: Backend> {
    dims: Dims,
    pub(crate) vals: Vec<B::Buf>,
    pub(crate) grads: Vec<B::Buf>,
    pub(crate) ws: B::Buf,
    pub(crate) input: usize,
    pub(crate) output: usize,
    /// Training target (same shape as the output) and the loss scalar, for [`crate::train`].
    pub(crate) target: B::Buf,
    pub(crate) loss: B::Buf,
    /// False for [`Model::inference_activations`] (no gradient or target buffers).
    pub(crate) trainable: bool,
}

impl<B: Backend> Activations<B> {
    fn alloc(be: &B, dims: Dims, plan: Plan, trainable: bool) -> Result<Self> {
        // Every buffer's length and kind, in allocation order: activation and gradient per tensor (the input never
        // needs a gradient; inference needs none at all), scratch, target, loss.
        let ws_len = (plan.convs.iter().map(|g| be.conv_workspace_len(g)))
            .chain(plan.convts.iter().map(|g| be.convt_workspace_len(g)))
            .max()
            .unwrap_or(0);
        let mut specs = Vec::with_capacity(2 * plan.tensors.len() + 3);
        for (i, t) in plan.tensors.iter().enumerate() {
            let len = t.dims.pixels() * t.c;
            let glen = if trainable && i != plan.input { len } else { 0 };
            specs.push((len, BufKind::Activation));
            specs.push((glen, BufKind::Activation));
        }
        specs.push((ws_len, BufKind::Workspace));
        let target_len = if trainable { dims.pixels() } else { 0 };
        specs.push((target_len, BufKind::Activation));
        specs.push((1, BufKind::Param));
        // One block for all of them (ended on every path, errors included).
        struct Reserved<'a, B: Backend>(&'a B);
        impl<B: Backend> Drop for Reserved<'_, B> {
            fn drop(&mut self) {
                self.0.end_reserve();
            }
        }
        be.reserve(&specs)?;
        let _reserved = Reserved(be);
        let mut bufs = specs
            .iter()
            .map(|&(len, kind)| be.alloc_kind(len, kind))
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        let mut next = || bufs.next().expect("one buffer per spec");
        let mut vals = Vec::with_capacity(plan.tensors.len());
        let mut grads = Vec::with_capacity(plan.tensors.len());
        for _ in &plan.tensors {
            vals.push(next());
            grads.push(next());
        }
        let ws = next();
        let target = next();
        let loss = next();
        Ok(Activations {
            dims,
            vals,
            grads,
            ws,
            input: plan.input,
            output: plan.output,
            target,
            loss,
            trainable,
        })
    }
    /// Batch and image size these buffers were made for.
    pub fn dims(&self) -> Dims {
        self.dims
    }
    /// Floats in the input (and in the output): `n · h · w` (one channel).
    pub fn image_len(&self) -> usize {
        self.dims.pixels()
    }
    /// Copies a batch (`n` row-major `h × w` images, sample-major) into the input.
    pub fn upload_input(&mut self, be: &B, host: &[f32]) -> Result<()> {
        self.check_host("input batch", host.len())?;
        be.upload(host, &mut self.vals[self.input], 0)
    }
    /// Copies the output batch to the host.
    pub fn download_output(&self, be: &B, host: &mut [f32]) -> Result<()> {
        self.check_host("output batch", host.len())?;
        be.download(&self.vals[self.output], 0, host)
    }
    /// [`Activations::upload_input`] from the first `image_len()` floats of `host` memory, possibly asynchronous
    /// and normalised on the way (see [`Backend::upload_host`]).
    pub fn upload_input_host(
        &mut self,
        be: &B,
        host: &crate::HostBuf,
        norm: Option<crate::ImageNorm>,
    ) -> Result<()> {
        let len = self.image_len();
        if host.len() < len {
            self.check_host("input batch", host.len())?;
        }
        be.upload_host(host, len, &mut self.vals[self.input], 0, norm)
    }
    /// [`Activations::upload_target`] from the first `image_len()` floats of `host` memory, possibly asynchronous
    /// (see [`Backend::upload_host`]).
    pub fn upload_target_host(&mut self, be: &B, host: &crate::HostBuf) -> Result<()> {
        let len = self.image_len();
        if host.len() < len {
            self.check_host("target batch", host.len())?;
        }
        be.upload_host(host, len, &mut self.target, 0, None)
    }
    /// Starts copying the output batch into the first `image_len()` floats of `host`, as the ops queued so far
    /// leave it, restored to the raw scale on the way (see [`Backend::download_host`]); a later forward may be
    /// queued at once.
    pub fn download_output_host(
        &self,
        be: &B,
        host: &mut crate::HostBuf,
        norm: Option<crate::ImageNorm>,
    ) -> Result<()> {
        let len = self.image_len();
        if host.len() < len {
            self.check_host("output batch", host.len())?;
        }
        be.download_host(&self.vals[self.output], 0, len, host, norm)
    }
    /// Copies a target batch (same layout as the input) for the loss.
    pub fn upload_target(&mut self, be: &B, host: &[f32]) -> Result<()> {
        self.check_host("target batch", host.len())?;
        be.upload(host, &mut self.target, 0)
    }
    /// The target buffer, for backends/loaders that fill it on the device.
    pub fn target_mut(&mut self) -> &mut B::Buf {
        &mut self.target
    }
    /// Bytes held by the buffers (activations, gradients, scratch), for memory reports.
    pub fn bytes(&self, be: &B) -> usize {
        let f = |b: &B::Buf| be.len(b);
        4 * (self.vals.iter().map(f).sum::<usize>()
            + self.grads.iter().map(f).sum::<usize>()
            + f(&self.ws)
            + f(&self.target))
    }
    /// The input buffer (dense, 1 channel), for backends that fill it on the device.
    pub fn input_mut(&mut self) -> &mut B::Buf {
        &mut self.vals[self.input]
    }
    /// The output buffer (dense, 1 channel).
    pub fn output(&self) -> &B::Buf {
        &self.vals[self.output]
    }
    /// The output gradient, to be written by the loss before [`Model::backward`].
    pub fn doutput_mut(&mut self) -> &mut B::Buf {
        &mut self.grads[self.output]
    }
    /// Output and its gradient at once (what a loss op needs).
    pub fn output_and_doutput(&mut self) -> (&B::Buf, &mut B::Buf) {
        (&self.vals[self.output], &mut self.grads[self.output])
    }
    fn check_host(&self, what: &str, got: usize) -> Result<()> {
        if got != self.image_len() {
            return Err(NnError::Length {
                what: what.to_string(),
                expected: self.image_len(),
                got,
            });
        }
        Ok(())
    }
}

/// Two distinct elements of a slice, mutably.
pub(crate) fn two_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j, "internal: same tensor borrowed twice");
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

/// One element mutably and another immutably.
pub(crate) fn ref_mut<T>(v: &mut [T], i: usize, j: usize) -> (&T, &mut T) {
    let (a, b) = two_mut(v, i, j);
    (&*a, b)
}

/// A conv layer of a model: its geometry (without dims) and parameter offsets.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvLayer {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub w: usize,
    pub b: usize,
    pub act: Activation,
}

impl ConvLayer {
    /// Registers `name.weight` `[cout, cin, k, k]` and `name.bias` in the table.
    pub fn new(
        table: &mut ParamTable,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        act: Activation,
    ) -> Self {
        use crate::params::ParamKind;
        let fan_in = cin * k * k;
        let w = table.push(
            format!("{name}.weight"),
            &[cout, cin, k, k],
            ParamKind::ConvWeight,
            fan_in,
        );
        let b = table.push(format!("{name}.bias"), &[cout], ParamKind::Bias, fan_in);
        ConvLayer {
            cin,
            cout,
            k,
            w,
            b,
            act,
        }
    }
    pub fn geom(&self, dims: Dims) -> ConvGeom {
        ConvGeom {
            dims,
            cin: self.cin,
            cout: self.cout,
            k: self.k,
        }
    }

    /// y = act(conv(x) + b).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        dims: Dims,
        params: &B::Buf,
        x: &B::Buf,
        xv: View,
        y: &mut B::Buf,
        yv: View,
        ws: &mut B::Buf,
    ) -> Result<()> {
        be.conv2d_forward(
            &self.geom(dims),
            x,
            xv,
            params,
            self.w,
            Some(self.b),
            self.act,
            y,
            yv,
            ws,
        )
    }

    /// Backward of [`ConvLayer::forward`]: `dy` (in place) becomes the pre-activation gradient, `db` and `dw`
    /// accumulate into `grads`, and `dx` receives the input gradient. `dy_pre`: an earlier op already did this
    /// layer's activation backward (it wrote `dy` through [`InputGrad::ThroughAct`] or a fused pool backward).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        dims: Dims,
        params: &B::Buf,
        grads: &mut B::Buf,
        x: &B::Buf,
        xv: View,
        y: &B::Buf,
        yv: View,
        dy: &mut B::Buf,
        dyv: View,
        dy_pre: bool,
        dx: InputGrad<'_, B>,
        ws: &mut B::Buf,
    ) -> Result<()> {
        let g = self.geom(dims);
        if !dy_pre {
            be.bias_act_backward(
                dims.pixels(),
                self.cout,
                self.act,
                y,
                yv,
                dy,
                dyv,
                grads,
                Some(self.b),
            )?;
        }
        be.conv2d_backward_filter(&g, x, xv, dy, dyv, grads, self.w, ws)?;
        match dx {
            InputGrad::None => Ok(()),
            InputGrad::Into(dx, dxv, accumulate) => {
                be.conv2d_backward_data(&g, dy, dyv, params, self.w, dx, dxv, accumulate, ws)
            }
            InputGrad::ThroughAct(dx, dxv, producer) => be.conv2d_backward_data_act(
                &g,
                dy,
                dyv,
                params,
                self.w,
                x,
                xv,
                dx,
                dxv,
                producer.act_backward(),
                grads,
                ws,
            ),
        }
    }

    /// This layer's bias + activation backward, for the ops that fuse it.
    pub fn act_backward(&self) -> ActBackward {
        ActBackward {
            act: self.act,
            db_off: Some(self.b),
        }
    }
}

/// Where a conv layer's input gradient goes ([`ConvLayer::backward`]).
pub(crate) enum InputGrad<'a, B: Backend> {
    /// Nowhere (the network's input).
    None,
    /// Into the buffer at the view, added to what is there when the flag is set.
    Into(&'a mut B::Buf, View, bool),
    /// Into the buffer at the view (overwritten), then through the backward of the given layer's bias +
    /// activation — the layer whose output is this conv's input — fused where the backend can. That layer's
    /// backward then runs with `dy_pre`.
    ThroughAct(&'a mut B::Buf, View, &'a ConvLayer),
}

/// Nearest valid sizes around `v` for divisor `d` (at least `d`).
pub(crate) fn nearest_multiples(v: usize, d: usize) -> (usize, usize) {
    let lo = (v / d * d).max(d);
    let hi = v.div_ceil(d) * d;
    (lo, hi.max(d))
}
