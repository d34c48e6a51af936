//! One training step (forward → loss → backward → Adam) and the state it updates.

use crate::backend::{AdamParams, Backend, LossKind};
use crate::models::{Activations, Model};
use crate::{NnError, Result};

/// Parameters, gradients and Adam moments on a backend: four buffers of [`crate::ParamTable::len`] floats with
/// the same layout, plus the number of Adam steps taken.
pub struct TrainState<B: Backend> {
    pub params: B::Buf,
    pub grads: B::Buf,
    pub m: B::Buf,
    pub v: B::Buf,
    /// Adam steps taken so far (torch's `state["step"]`).
    pub step: u64,
}

impl<B: Backend> TrainState<B> {
    /// Fresh state from host parameters (flat, internal layout, e.g. [`Model::init_params`]); zero moments.
    pub fn new(be: &B, model: &Model, params: &[f32]) -> Result<Self> {
        let n = model.params().len();
        model
            .params()
            .check_len("initial parameters", params.len())?;
        let mut p = be.alloc(n)?;
        be.upload(params, &mut p, 0)?;
        Ok(TrainState {
            params: p,
            grads: be.alloc(n)?,
            m: be.alloc(n)?,
            v: be.alloc(n)?,
            step: 0,
        })
    }
    /// State resumed from host parameters, moments and step count (see [`crate::checkpoint`]).
    pub fn resume(
        be: &B,
        model: &Model,
        params: &[f32],
        m: &[f32],
        v: &[f32],
        step: u64,
    ) -> Result<Self> {
        let mut s = Self::new(be, model, params)?;
        model.params().check_len("adam m", m.len())?;
        model.params().check_len("adam v", v.len())?;
        be.upload(m, &mut s.m, 0)?;
        be.upload(v, &mut s.v, 0)?;
        s.step = step;
        Ok(s)
    }
    /// Host copy of a buffer of this state.
    pub fn download(be: &B, buf: &B::Buf) -> Result<Vec<f32>> {
        let mut h = vec![0.0; be.len(buf)];
        be.download(buf, 0, &mut h)?;
        Ok(h)
    }
}

/// Forward + loss + backward on the batch already in `acts` (input and target uploaded): leaves the parameter
/// gradients in `grads` (zeroed first) and returns the loss. Used by [`train_step`], by gradient checks and by
/// the PyTorch parity tests.
pub fn loss_and_gradients<B: Backend>(
    be: &B,
    model: &Model,
    params: &B::Buf,
    grads: &mut B::Buf,
    acts: &mut Activations<B>,
    loss: LossKind,
) -> Result<f32> {
    model.forward(be, params, acts)?;
    let l = compute_loss(be, acts, loss)?;
    be.fill(grads, 0, be.len(grads), 0.0)?;
    model.backward(be, params, grads, acts)?;
    Ok(l)
}

/// Loss of the current output (after [`Model::forward`]) against the uploaded target; also writes the output
/// gradient for [`Model::backward`].
pub fn eval_loss_of_output<B: Backend>(
    be: &B,
    acts: &mut Activations<B>,
    loss: LossKind,
) -> Result<f32> {
    compute_loss(be, acts, loss)
}

/// Loss of the current output against the uploaded target; also writes the output gradient.
fn compute_loss<B: Backend>(be: &B, acts: &mut Activations<B>, loss: LossKind) -> Result<f32> {
    if !acts.trainable {
        return Err(crate::NnError::Shape {
            op: "loss",
            msg: "these activations were allocated by Model::inference_activations (no target or gradients); \
                  use Model::activations"
                .into(),
        });
    }
    let len = acts.image_len();
    let Activations {
        vals,
        grads,
        target,
        loss: lbuf,
        output,
        ..
    } = acts;
    be.loss_forward_backward(loss, len, &vals[*output], target, &mut grads[*output], lbuf)?;
    let mut l = [0.0f32];
    be.download(lbuf, 0, &mut l)?;
    Ok(l[0])
}

/// Forward pass and loss only (validation). The batch must be uploaded in `acts`.
pub fn eval_loss<B: Backend>(
    be: &B,
    model: &Model,
    params: &B::Buf,
    acts: &mut Activations<B>,
    loss: LossKind,
) -> Result<f32> {
    model.forward(be, params, acts)?;
    compute_loss(be, acts, loss)
}

/// One optimisation step on a host batch: upload `input` and `target` (`n` row-major images each), forward, loss,
/// backward, Adam. Returns the loss before the update. A non-finite loss returns [`NnError::NonFiniteLoss`] and
/// leaves the parameters and moments untouched.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: Backend>(
    be: &B,
    model: &Model,
    state: &mut TrainState<B>,
    acts: &mut Activations<B>,
    input: &[f32],
    target: &[f32],
    loss: LossKind,
    adam: &AdamParams,
) -> Result<f32> {
    acts.upload_input(be, input)?;
    acts.upload_target(be, target)?;
    train_step_uploaded(be, model, state, acts, loss, adam)
}

/// [`train_step`] on a batch already in `acts` (for loaders that fill device buffers themselves).
pub fn train_step_uploaded<B: Backend>(
    be: &B,
    model: &Model,
    state: &mut TrainState<B>,
    acts: &mut Activations<B>,
    loss: LossKind,
    adam: &AdamParams,
) -> Result<f32> {
    let l = loss_and_gradients(be, model, &state.params, &mut state.grads, acts, loss)?;
    if !l.is_finite() {
        return Err(NnError::NonFiniteLoss(l));
    }
    state.step += 1;
    be.adam_step(
        adam,
        state.step,
        &mut state.params,
        &state.grads,
        &mut state.m,
        &mut state.v,
    )?;
    Ok(l)
}
