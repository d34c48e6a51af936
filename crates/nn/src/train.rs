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
    loss_on_device(be, acts, loss)?;
    let mut l = [0.0f32];
    be.download(&acts.loss, 0, &mut l)?;
    Ok(l[0])
}

/// Writes the loss of the current output into `acts.loss` and the output gradient, without reading it back.
fn loss_on_device<B: Backend>(be: &B, acts: &mut Activations<B>, loss: LossKind) -> Result<()> {
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
    be.loss_forward_backward(loss, len, &vals[*output], target, &mut grads[*output], lbuf)
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

/// [`train_step`] on a batch already in `acts` (for loaders that fill device buffers themselves):
/// [`enqueue_train_step`] then [`PendingStep::finish`].
pub fn train_step_uploaded<B: Backend>(
    be: &B,
    model: &Model,
    state: &mut TrainState<B>,
    acts: &mut Activations<B>,
    loss: LossKind,
    adam: &AdamParams,
) -> Result<f32> {
    enqueue_train_step(be, model, state, acts, loss, adam)?.finish(be, acts)
}

/// Queues one optimisation step (forward, loss, backward, Adam) on the batch already in `acts`, without waiting
/// for it: a device backend returns as soon as the work is queued. Read its loss with [`PendingStep::finish`].
///
/// Between the two, the caller may upload the NEXT batch into the same `acts` (`Activations::upload_input` /
/// `upload_target`): backends order uploads after the work already queued (the CPU backend runs the step here,
/// synchronously), so the queued step still sees its own batch while the next one travels to the device. That
/// is how the training loop (crates/train) overlaps the host → device copy with the step. Nothing else may use
/// `acts` in between (the loss is read from it).
///
/// The whole step runs inside [`Backend::run_step`] (the CUDA backend replays it as one graph): the loss stays on
/// the device until the update is queued, and the update is skipped on the device when the loss is not finite
/// ([`Backend::adam_step_if_finite`]).
pub fn enqueue_train_step<'s, B: Backend>(
    be: &B,
    model: &Model,
    state: &'s mut TrainState<B>,
    acts: &mut Activations<B>,
    loss: LossKind,
    adam: &AdamParams,
) -> Result<PendingStep<'s, B>> {
    let step = state.step + 1;
    let TrainState {
        params,
        grads,
        m,
        v,
        ..
    } = &mut *state;
    be.run_step(&mut || {
        model.forward(be, params, acts)?;
        loss_on_device(be, acts, loss)?;
        be.fill(grads, 0, be.len(grads), 0.0)?;
        model.backward(be, params, grads, acts)?;
        be.adam_step_if_finite(adam, step, &acts.loss, params, grads, m, v)
    })?;
    Ok(PendingStep { state, step })
}

/// A step queued by [`enqueue_train_step`] whose loss has not been read. It borrows the [`TrainState`], so no
/// other step can be queued before this one is finished.
#[must_use = "the step's loss (and whether it was finite) is only known after finish()"]
pub struct PendingStep<'s, B: Backend> {
    state: &'s mut TrainState<B>,
    /// The step count once this step is accepted.
    step: u64,
}

impl<B: Backend> PendingStep<'_, B> {
    /// Waits for the step, reads its loss from `acts` (the activations it was queued with) and returns it. A
    /// non-finite loss returns [`NnError::NonFiniteLoss`]: the update was skipped on the device and the step count
    /// stays as it was.
    pub fn finish(self, be: &B, acts: &Activations<B>) -> Result<f32> {
        let mut l = [0.0f32];
        be.download(&acts.loss, 0, &mut l)?;
        if !l[0].is_finite() {
            return Err(NnError::NonFiniteLoss(l[0]));
        }
        self.state.step = self.step;
        Ok(l[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Cpu;
    use crate::Arch;

    /// Queue step k, upload batch k + 1 into the same activations, then read step k's loss (the training loop's
    /// overlap): bit-identical losses and parameters to plain `train_step` calls, and a NaN batch still updates
    /// nothing.
    #[test]
    fn enqueue_upload_finish_equals_train_step() {
        let be = Cpu::new(1).unwrap();
        let model = Model::new(Arch::from_name("unet", Some(&[4, 8])).unwrap()).unwrap();
        let init = model.init_params(3);
        let batch = |k: usize| -> (Vec<f32>, Vec<f32>) {
            let x: Vec<f32> = (0..512)
                .map(|i| ((i * (k + 3)) as f32 * 0.11).sin())
                .collect();
            let t: Vec<f32> = x.iter().map(|v| v * 0.9 + 0.05).collect();
            (x, t)
        };
        let adam = AdamParams::default();
        let mut s1 = TrainState::new(&be, &model, &init).unwrap();
        let mut a1 = model.activations(&be, 2, 16, 16).unwrap();
        let want: Vec<f32> = (0..4)
            .map(|k| {
                let (x, t) = batch(k);
                train_step(&be, &model, &mut s1, &mut a1, &x, &t, LossKind::Mse, &adam).unwrap()
            })
            .collect();

        let mut s2 = TrainState::new(&be, &model, &init).unwrap();
        let mut a2 = model.activations(&be, 2, 16, 16).unwrap();
        let (x, t) = batch(0);
        a2.upload_input(&be, &x).unwrap();
        a2.upload_target(&be, &t).unwrap();
        let mut got = Vec::new();
        for k in 0..4 {
            let p =
                enqueue_train_step(&be, &model, &mut s2, &mut a2, LossKind::Mse, &adam).unwrap();
            if k + 1 < 4 {
                let (x, t) = batch(k + 1);
                a2.upload_input(&be, &x).unwrap();
                a2.upload_target(&be, &t).unwrap();
            }
            got.push(p.finish(&be, &a2).unwrap());
        }
        assert_eq!(got, want);
        assert_eq!(s2.step, 4);
        let p1 = TrainState::download(&be, &s1.params).unwrap();
        assert_eq!(TrainState::download(&be, &s2.params).unwrap(), p1);

        // A NaN target: NonFiniteLoss from finish, nothing updated, step count unchanged.
        let (x, mut t) = batch(9);
        t[5] = f32::NAN;
        a2.upload_input(&be, &x).unwrap();
        a2.upload_target(&be, &t).unwrap();
        let p = enqueue_train_step(&be, &model, &mut s2, &mut a2, LossKind::Mse, &adam).unwrap();
        let r = p.finish(&be, &a2);
        assert!(
            matches!(r, Err(NnError::NonFiniteLoss(v)) if v.is_nan()),
            "{r:?}"
        );
        assert_eq!(s2.step, 4);
        assert_eq!(TrainState::download(&be, &s2.params).unwrap(), p1);
    }

    /// A non-finite loss is reported and leaves parameters, moments and the step count as they were (the update
    /// is skipped by `adam_step_if_finite` inside the step, before the loss is read back).
    #[test]
    fn non_finite_loss_updates_nothing() {
        let be = Cpu::new(1).unwrap();
        let model = Model::new(Arch::from_name("unet", Some(&[4, 8])).unwrap()).unwrap();
        let init = model.init_params(1);
        let mut state = TrainState::new(&be, &model, &init).unwrap();
        let mut acts = model.activations(&be, 1, 16, 16).unwrap();
        let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
        let adam = AdamParams::default();
        let l = train_step(
            &be,
            &model,
            &mut state,
            &mut acts,
            &x,
            &x,
            LossKind::Mse,
            &adam,
        )
        .unwrap();
        assert!(l.is_finite());
        let (p, m) = (
            TrainState::download(&be, &state.params).unwrap(),
            TrainState::download(&be, &state.m).unwrap(),
        );
        let mut bad = x.clone();
        bad[17] = f32::NAN;
        let r = train_step(
            &be,
            &model,
            &mut state,
            &mut acts,
            &x,
            &bad,
            LossKind::Mse,
            &adam,
        );
        assert!(
            matches!(r, Err(NnError::NonFiniteLoss(v)) if v.is_nan()),
            "{r:?}"
        );
        assert_eq!(state.step, 1);
        assert_eq!(TrainState::download(&be, &state.params).unwrap(), p);
        assert_eq!(TrainState::download(&be, &state.m).unwrap(), m);
    }
}
