//! Stage III: distribution matching with the well-guided teacher (DMD2 style).
//!
//! Three sharded roles:
//! - the **generator** G: the Stage II weights with the candidates physically removed, a
//!   few-step sampler over `distill.timesteps` (shifted) with the step rule `distill.sampler`
//!   (Euler or re-noising). With backward simulation, the input of step k is G's own rollout
//!   from noise through steps 0..k (no gradient); without it, a training video noised to step
//!   k's time.
//! - the **real score** R: the frozen Stage II model. Its pruned pass P runs the blocks the
//!   generator keeps, its unpruned pass U every block:
//!   `v_real = P(null) + b1 (P(c) - P(null)) + b2 (U(c) - P(c))`, b1 and b2 drawn per step.
//!   With `distill.unpruned = "teacher"` U is the frozen teacher instead of the Stage II
//!   model's full pass (a fourth, frozen model); it also makes the regression trajectories.
//! - the **fake score** F: starts from the same weights as G (or, `distill.fake_score =
//!   "full"`, from every block of the Stage II model), trained every step with the
//!   flow-matching loss on detached generator samples.
//!
//! Every `generator_every`-th step the generator gets the DMD2 loss: noise its sample x to a
//! time t in `t_range`, `grad = (x0_F - x0_R) / mean|x - x0_R|`, `L = 0.5 |x - sg(x - grad)|^2`;
//! with `distill.regression.weight` > 0 also DMD's regression loss: its first-step prediction
//! from a pair's noise against the teacher's ODE sample from that noise (`ode_pairs.rs`); with
//! `distill.data_forcing` > 0 also the data-forcing loss: on training videos noised to the
//! trained step's time, its clean-video prediction against the well-guided real score's; with
//! `distill.gan.weight` > 0 also DMD2's GAN loss from a classifier on the fake score's features
//! (`gan.rs`), the classifier trained every step on training videos against generator samples.
//! Random draws are functions of `(seed, step, global sample index)`, so W ranks train what
//! one rank trains.

use super::gan::{ClassifierReport, GanClassifier};
use super::monitor::Monitor;
use super::ode_pairs::{OdePairs, TeacherPass};
use super::{kept_blocks, StageCtx};
use crate::collective::{all_reduce_mean, Collective};
use crate::data::Loader;
use crate::flow;
use crate::flow::NullPrompt;
use crate::model::Dit;
use crate::rng::Rng;
use crate::shard::ShardedDit;
use crate::train::{batch_tensors, draws, flow_matching_backward, micro_batches, Role};
use crate::trainer::{StepOutput, TrainingStage};
use anyhow::{Context, Result};
use flg_core::config::{Distill, FakeScoreBlocks, GuidancePass, UnprunedSource};
use flg_core::formats::importance::ImportanceReport;
use flg_core::formats::student::SamplerSettings;
use flg_core::Stage;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// Sub-streams of the stage's random draws.
const STEP_STREAM: u64 = 0x5354_4550; // "STEP": k, b1, b2
const ROLLOUT: u64 = 30; // initial noise (or data noise without backward simulation)
const DMD: u64 = 31; // the time and noise that compare the two scores
const FAKE: u64 = 32; // the fake score's flow-matching draws
const RENOISE: u64 = 40; // + j: the fresh noise of the rollout's re-noising step j
const DATA_FORCING: u64 = 33; // the noise put on training videos for the data-forcing term
const GAN: u64 = 34; // the time and noise of the GAN classifier's real and fake videos

/// The three roles and which blocks each pass runs.
pub struct Roles {
    pub generator: Role,
    pub fake: Role,
    /// Frozen; never stepped.
    pub real: ShardedDit,
    /// The unpruned pass's own model when it is not `real` (`distill.unpruned = "teacher"`
    /// after a Stage II); frozen.
    pub unpruned: Option<ShardedDit>,
    /// Blocks of the generator (and of the real score's pruned pass), original indices.
    pub pruned_ids: Vec<usize>,
    /// Every block of the real score (its unpruned pass).
    pub full_ids: Vec<usize>,
    /// Blocks of the fake score: `pruned_ids`, or `full_ids` with `distill.fake_score = "full"`.
    pub fake_ids: Vec<usize>,
    /// The prompt the real score's guidance contrasts with.
    pub null: NullPrompt,
    /// DMD2's GAN classifier on the fake score's features (`distill.gan.weight` > 0).
    pub gan: Option<GanClassifier>,
}

impl Roles {
    /// Builds the roles from the Stage II (or teacher) weights `base`, removing `removed`;
    /// `unpruned`: other weights for the unpruned pass U, or `None` for `base`'s.
    pub fn new(
        base: &Dit,
        unpruned: Option<&Dit>,
        removed: &[usize],
        d: &Distill,
        null: NullPrompt,
        comm: &dyn Collective,
        shard: impl Fn(&Dit) -> ShardedDit,
    ) -> Roles {
        let full_ids = base.block_ids.clone();
        let pruned_ids = kept_blocks(&full_ids, removed);
        let student = base.pruned(&pruned_ids);
        let fake_ids = match d.fake_score {
            FakeScoreBlocks::Generator => pruned_ids.clone(),
            FakeScoreBlocks::Full => full_ids.clone(),
        };
        Roles {
            generator: Role::new(
                shard(&student),
                &d.generator_optim,
                d.steps / d.generator_every,
                d.ema_decay,
                comm,
            ),
            fake: Role::new(
                shard(&base.pruned(&fake_ids)),
                &d.fake_optim,
                d.steps,
                0.0,
                comm,
            ),
            real: shard(base),
            unpruned: unpruned.map(&shard),
            pruned_ids,
            full_ids,
            fake_ids,
            null,
            gan: None,
        }
    }

    /// The model of the unpruned pass U (run with `full_ids`).
    pub fn unpruned_model(&self) -> &ShardedDit {
        self.unpruned.as_ref().unwrap_or(&self.real)
    }
}

/// The per-step choices every rank shares.
#[derive(Clone, Copy, Debug)]
pub struct StepDraw {
    /// Which of the sampler's steps the generator trains at.
    pub k: usize,
    pub b1: f64,
    pub b2: f64,
}

pub fn step_draw(seed: u64, step: u64, d: &Distill) -> StepDraw {
    let mut rng = Rng::derive(seed, &[STEP_STREAM, step]);
    let k = rng.below(d.timesteps.len() as u64) as usize;
    let lerp = |r: [f64; 2], u: f64| r[0] + (r[1] - r[0]) * u;
    let b1 = lerp(d.b1_range, rng.uniform());
    let b2 = lerp(d.b2_range, rng.uniform());
    StepDraw { k, b1, b2 }
}

/// The student's times after shift: `timesteps` then 0.
pub fn sampler_times(d: &Distill) -> Vec<f64> {
    d.timesteps
        .iter()
        .map(|&t| flow::shift_scalar(t, d.shift))
        .chain([0.0])
        .collect()
}

/// The sampler settings recorded with the student.
pub fn sampler_settings(d: &Distill) -> SamplerSettings {
    let times = sampler_times(d);
    SamplerSettings {
        timesteps: times[..times.len() - 1].to_vec(),
        cfg: 1.0,
        kind: d.sampler,
        steps: Some(d.timesteps.len()),
        shift: Some(d.shift),
    }
}

/// The generator's GAN term on one generator step (means over ranks).
#[derive(Clone, Copy, Debug)]
pub struct GanGeneratorReport {
    /// `mean softplus(-D(features(noised sample)))`, unweighted; ln 2 = 0.693 at chance.
    pub loss: f64,
    /// The norm of its weighted gradient on the sample over the DMD gradient's.
    pub grad_ratio: f64,
}

/// What one Stage III step measured (means over ranks).
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    pub draw: StepDraw,
    pub fake_loss: f64,
    pub fake_grad_norm: f64,
    /// The DMD2 loss and gradient norm, on generator steps.
    pub generator: Option<(f64, f64)>,
    /// The regression loss (unweighted), on generator steps with regression pairs.
    pub regression: Option<f64>,
    /// The data-forcing loss (unweighted), on generator steps with `distill.data_forcing` > 0.
    pub data_forcing: Option<f64>,
    /// The generator's GAN loss, on generator steps with a GAN classifier.
    pub gan_generator: Option<GanGeneratorReport>,
    /// The GAN classifier's update, every step with a GAN classifier.
    pub gan_classifier: Option<ClassifierReport>,
}

/// The noise level at which generator samples are compared (DMD) or classified (GAN): `u`
/// uniform in [0, 1) mapped onto `distill.t_range`, then shifted.
fn comparison_time(u: &Tensor, d: &Distill) -> Tensor {
    flow::shift_t(&(u * (d.t_range[1] - d.t_range[0]) + d.t_range[0]), d.shift)
}

fn full_t(b: i64, t: f64, like: &Tensor) -> Tensor {
    Tensor::full([b], t, (Kind::Float, like.device()))
}

/// One Stage III step on a local batch (`x0`: the generator's input without backward simulation, and the data-forcing term's videos):
/// [`gradients`], `micro` videos at a time (`cluster.micro_batch_size`; 0: all at once), then
/// each role that got gradients takes its clipped optimizer step.
#[allow(clippy::too_many_arguments)]
pub fn step(
    roles: &mut Roles,
    comm: &dyn Collective,
    d: &Distill,
    seed: u64,
    step: u64,
    x0: &Tensor,
    text: &Tensor,
    pairs: Option<&OdePairs>,
    micro: u64,
) -> StepReport {
    let local = x0.size()[0] as usize;
    let mut total: Option<StepReport> = None;
    for mb in micro_batches(local, micro) {
        roles.generator.model.grad_scale = mb.share;
        roles.fake.model.grad_scale = mb.share;
        if let Some(c) = roles.gan.as_mut() {
            c.role.model.grad_scale = mb.share;
        }
        // The items' global indices, so that every draw is the one the whole batch makes.
        let first = comm.rank() * local + mb.offset;
        let part = gradients(
            roles,
            comm,
            d,
            seed,
            step,
            &mb.of(x0),
            &mb.of(text),
            pairs,
            first,
        );
        let part = part.scaled(mb.share);
        total = Some(match total {
            None => part,
            Some(t) => t.plus(&part),
        });
    }
    roles.generator.model.grad_scale = 1.0;
    roles.fake.model.grad_scale = 1.0;
    if let Some(c) = roles.gan.as_mut() {
        c.role.model.grad_scale = 1.0;
        c.role.step(comm);
    }
    let mut r = total.expect("a batch has one micro-batch at least");
    if let Some((loss, _)) = r.generator {
        r.generator = Some((loss, roles.generator.step(comm)));
    }
    r.fake_grad_norm = roles.fake.step(comm);
    r
}

impl StepReport {
    /// The losses times `w` (a micro-batch's share); the draw and norms as they are.
    fn scaled(mut self, w: f64) -> StepReport {
        if w != 1.0 {
            self.fake_loss *= w;
            self.generator = self.generator.map(|(l, n)| (l * w, n));
            self.regression = self.regression.map(|l| l * w);
            self.data_forcing = self.data_forcing.map(|l| l * w);
            self.gan_generator = self.gan_generator.map(|g| GanGeneratorReport {
                loss: g.loss * w,
                grad_ratio: g.grad_ratio * w,
            });
            self.gan_classifier = self.gan_classifier.map(|c| ClassifierReport {
                loss: c.loss * w,
                accuracy: c.accuracy * w,
            });
        }
        self
    }

    /// Two micro-batches' losses added up.
    fn plus(self, o: &StepReport) -> StepReport {
        let add = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
        StepReport {
            draw: self.draw,
            fake_loss: self.fake_loss + o.fake_loss,
            fake_grad_norm: self.fake_grad_norm,
            generator: self
                .generator
                .zip(o.generator)
                .map(|((a, n), (b, _))| (a + b, n)),
            regression: add(self.regression, o.regression),
            data_forcing: add(self.data_forcing, o.data_forcing),
            gan_generator: self.gan_generator.zip(o.gan_generator).map(|(a, b)| {
                GanGeneratorReport {
                    loss: a.loss + b.loss,
                    grad_ratio: a.grad_ratio + b.grad_ratio,
                }
            }),
            gan_classifier: self.gan_classifier.zip(o.gan_classifier).map(|(a, b)| {
                ClassifierReport {
                    loss: a.loss + b.loss,
                    accuracy: a.accuracy + b.accuracy,
                }
            }),
        }
    }
}

/// The gradients of one Stage III step, left in the roles' shard gradients (the generator's
/// only on generator steps). Both come from the same generator sample, made before either
/// role changes, so the order of the two updates does not matter. The report's gradient norms
/// are filled in by [`step`]. `x0` and `text` hold the items `first..` of the global batch
/// (every draw is keyed by the item's global index).
#[allow(clippy::too_many_arguments)]
pub fn gradients(
    roles: &mut Roles,
    comm: &dyn Collective,
    d: &Distill,
    seed: u64,
    step: u64,
    x0: &Tensor,
    text: &Tensor,
    pairs: Option<&OdePairs>,
    first: usize,
) -> StepReport {
    let device = x0.device();
    let b = x0.size()[0];
    let shape = x0.size()[1..].to_vec();
    let draw = step_draw(seed, step, d);
    let times = sampler_times(d);
    let train_generator = (step + 1) % d.generator_every == 0;

    // The generator's input at step k.
    let start = draws(seed, ROLLOUT, step, first, b as usize, &shape, device);
    let mut x = if d.backward_simulation {
        start.eps.shallow_clone()
    } else {
        flow::noisy(x0, &start.eps, &full_t(b, times[draw.k], x0))
    };
    if d.backward_simulation {
        for j in 0..draw.k {
            let v = roles.generator.model.output(
                comm,
                &x,
                &full_t(b, times[j], &x),
                text,
                &roles.pruned_ids,
            );
            x = flow::step_to(d.sampler, &x, &v, times[j], times[j + 1], || {
                draws(
                    seed,
                    RENOISE + j as u64,
                    step,
                    first,
                    b as usize,
                    &shape,
                    device,
                )
                .eps
            });
        }
    }
    let tk = times[draw.k];
    let (v, tape) = {
        let g = &roles.generator.model;
        let t = full_t(b, tk, &x);
        // The generator's graph is needed only on the steps that train it.
        if train_generator {
            let (v, tape) = g.forward(comm, &x, &t, text, &roles.pruned_ids);
            (v, Some(tape))
        } else {
            (g.output(comm, &x, &t, text, &roles.pruned_ids), None)
        }
    };
    let sample = &x - v * tk; // the generator's x0

    let generator = train_generator.then(|| {
        let dr = draws(seed, DMD, step, first, b as usize, &shape, device);
        let t = comparison_time(&dr.u, d);
        let xt = flow::noisy(&sample, &dr.eps, &t);
        let v_fake = roles
            .fake
            .model
            .output(comm, &xt, &t, text, &roles.fake_ids);
        let v_real = real_velocity(roles, comm, &xt, &t, text, d.guidance, draw);
        let x0_fake = flow::x0_from_v(&xt, &v_fake, &t);
        let x0_real = flow::x0_from_v(&xt, &v_real, &t);
        let norm = (&sample - &x0_real)
            .abs()
            .mean_dim(&[1i64, 2, 3, 4][..], true, Kind::Float)
            .clamp_min(1e-6);
        let grad = (x0_fake - x0_real) / norm;
        let n = sample.numel() as f64;
        let loss = 0.5 * grad.square().mean(Kind::Float).double_value(&[]);
        // L = 0.5 mean((x - sg(x - grad))^2): dL/dx = grad / n, and x = x_k - t_k v.
        // (Computed as before the GAN term existed, so that runs without it are bit-identical.)
        let mut grad_v = grad * (-tk / n);
        // DMD2's GAN loss on the same noised sample: d xt / d x = 1 - t, d x / d v = -t_k.
        let gan = roles.gan.as_ref().map(|c| {
            let (l, g_xt) = c.generator_loss_grad(comm, &roles.fake.model, &xt, &t, text);
            let g = g_xt * flow::per_sample(&(-&t + 1.0)) * (-tk * d.gan.weight);
            // How hard the GAN term pushes against DMD, over the whole batch (every rank's
            // share scales both norms alike): the weight's tuning knob, and what the cap holds.
            let sq = |x: &Tensor| x.square().sum(Kind::Double).double_value(&[]);
            let m = all_reduce_mean(comm, &[sq(&grad_v), sq(&g)]);
            let ratio = (m[1] / m[0].max(1e-60)).sqrt();
            let cap = d.gan.max_grad_ratio;
            let scale = if cap > 0.0 && ratio > cap {
                cap / ratio
            } else {
                1.0
            };
            grad_v += g * scale;
            GanGeneratorReport {
                loss: l,
                grad_ratio: ratio,
            }
        });
        let tape = tape.expect("a tape on generator steps");
        roles.generator.model.backward(comm, tape, &grad_v);
        ((all_reduce_mean(comm, &[loss])[0], f64::NAN), gan)
    });
    let (generator, gan_generator) = match generator {
        Some((g, gan)) => (Some(g), gan),
        None => (None, None),
    };
    let regression = match pairs {
        Some(p) if train_generator && d.regression.weight > 0.0 => Some(regression_backward(
            roles,
            comm,
            p,
            d.regression.weight,
            draw.k,
            times[draw.k],
            seed,
            step,
            first,
            b as usize,
        )),
        _ => None,
    };
    let data_forcing = (train_generator && d.data_forcing > 0.0).then(|| {
        let dr = draws(seed, DATA_FORCING, step, first, b as usize, &shape, device);
        let t = full_t(b, tk, x0);
        let xt = flow::noisy(x0, &dr.eps, &t);
        let x0_real = flow::x0_from_v(
            &xt,
            &real_velocity(roles, comm, &xt, &t, text, d.guidance, draw),
            &t,
        );
        x0_regression_backward(roles, comm, &xt, tk, text, &x0_real, d.data_forcing)
    });

    // The fake score learns the generator's current distribution.
    let fd = draws(seed, FAKE, step, first, b as usize, &shape, device);
    // The GAN classifier: training videos (real) against the generator's samples (fake),
    // noised alike.
    let gan_classifier = roles.gan.as_mut().map(|c| {
        let dr = draws(seed, GAN, step, first, b as usize, &shape, device);
        let t = comparison_time(&dr.u, d);
        let real = flow::noisy(x0, &dr.eps, &t);
        let fake = flow::noisy(&sample.detach(), &dr.eps, &t);
        c.classifier_backward(comm, &roles.fake.model, &real, &fake, &t, text)
    });
    let fake_loss = flow_matching_backward(
        &mut roles.fake.model,
        comm,
        &sample.detach(),
        text,
        &fd,
        d.shift,
        0.0,
        &roles.null,
        &roles.fake_ids,
    );
    StepReport {
        draw,
        fake_loss,
        fake_grad_norm: f64::NAN,
        generator,
        regression,
        data_forcing,
        gan_generator,
        gan_classifier,
    }
}

/// DMD's regression term at sampler step `k` (time `tk`): the generator's prediction
/// `x0 = x - tk G(x, tk)` from the teacher's ODE state at `tk` of this rank's pairs (at k = 0,
/// the pair's noise), against the clean video the ODE reaches from there;
/// `weight * mean (x0 - target)^2` backpropagated into the generator's gradients (added to the
/// DMD loss's). Returns the unweighted loss, the mean over ranks.
#[allow(clippy::too_many_arguments)]
fn regression_backward(
    roles: &mut Roles,
    comm: &dyn Collective,
    pairs: &OdePairs,
    weight: f64,
    k: usize,
    tk: f64,
    seed: u64,
    step: u64,
    first: usize,
    b: usize,
) -> f64 {
    let (x, text, target) = pairs.pick(seed, step, first, b, k);
    x0_regression_backward(roles, comm, &x, tk, &text, &target, weight)
}

/// The generator's clean-video prediction `x - tk G(x, tk)` pulled towards `target`:
/// `weight * mean (x0 - target)^2` backpropagated into the generator's gradients (the
/// regression and data-forcing terms). Returns the unweighted loss, the mean over ranks.
fn x0_regression_backward(
    roles: &mut Roles,
    comm: &dyn Collective,
    x: &Tensor,
    tk: f64,
    text: &Tensor,
    target: &Tensor,
    weight: f64,
) -> f64 {
    let t = full_t(x.size()[0], tk, x);
    let g = &mut roles.generator.model;
    let (v, tape) = g.forward(comm, x, &t, text, &roles.pruned_ids);
    let err = x - &v * tk - target;
    let loss = err.square().mean(Kind::Float).double_value(&[]);
    // d/dv of weight * mean((x - tk v - y)^2) = -2 weight tk (x0 - y) / n.
    let grad_v = err * (-2.0 * weight * tk / v.numel() as f64);
    g.backward(comm, tape, &grad_v);
    all_reduce_mean(comm, &[loss])[0]
}

/// The well-guided teacher's velocity at `(xt, t)`:
/// `S(null) + b1 (S(c) - S(null)) + b2 (U(c) - P(c))`, S the pass `distill.guidance` names
/// (the paper's: the pruned pass P). The two guidance passes run as one batch; the intra term
/// is skipped when it cannot matter (b2 = 0, or nothing is pruned).
fn real_velocity(
    roles: &Roles,
    comm: &dyn Collective,
    xt: &Tensor,
    t: &Tensor,
    text: &Tensor,
    guidance: GuidancePass,
    draw: StepDraw,
) -> Tensor {
    let (model, ids) = match guidance {
        GuidancePass::Pruned => (&roles.real, &roles.pruned_ids),
        GuidancePass::Unpruned => (roles.unpruned_model(), &roles.full_ids),
    };
    let both = model.output(
        comm,
        &Tensor::cat(&[xt, xt], 0),
        &Tensor::cat(&[t, t], 0),
        &Tensor::cat(&[text, &roles.null.like(text)], 0),
        ids,
    );
    let parts = both.chunk(2, 0);
    let (s_c, s_null) = (&parts[0], &parts[1]);
    let mut v = s_null + (s_c - s_null) * draw.b1;
    if draw.b2 != 0.0 && roles.pruned_ids != roles.full_ids {
        let (u_c, p_c) = match guidance {
            GuidancePass::Pruned => (
                roles
                    .unpruned_model()
                    .output(comm, xt, t, text, &roles.full_ids),
                s_c.shallow_clone(),
            ),
            GuidancePass::Unpruned => (
                s_c.shallow_clone(),
                roles.real.output(comm, xt, t, text, &roles.pruned_ids),
            ),
        };
        v += (u_c - p_c) * draw.b2;
    }
    v
}

/// The weights Stage III starts from: Stage II's output when the run has a pruning stage, else
/// the teacher (baselines "plain DMD2" and "no Stage II"), with the stage that writes them.
pub fn base_path(ctx: &StageCtx) -> (PathBuf, Stage) {
    if ctx.has_stage(Stage::Pruning) {
        (ctx.run_dir.pruned_model(), Stage::Pruning)
    } else {
        (ctx.teacher.clone(), Stage::Pretrain)
    }
}

/// The blocks the generator drops: Stage I's candidates, or none without pruning.
pub fn removed_blocks(ctx: &StageCtx) -> Result<Vec<usize>> {
    if !ctx.cfg.distill.prune_generator {
        return Ok(Vec::new());
    }
    let path = ctx.run_dir.importance();
    Ok(ImportanceReport::read(&path)
        .with_context(|| {
            format!(
                "distill.prune_generator = true needs Stage I's candidates in {}; run the importance stage first",
                path.display()
            )
        })?
        .candidates)
}

/// Stage III's state: the three roles, the regression pairs, and the last generator loss (for
/// the progress bar).
pub struct DistillStage {
    pub roles: Roles,
    pub pairs: Option<OdePairs>,
    monitor: Option<Monitor>,
    cfg: Distill,
    seed: u64,
    last_generator_loss: f64,
}

impl DistillStage {
    /// From the Stage II (or teacher) weights `base`, the generator without `removed`.
    /// With `distill.regression.weight` > 0 the regression pairs are read from the run
    /// directory, or made there with the unpruned pass U.
    pub fn new(ctx: &StageCtx, base: &Dit, removed: &[usize]) -> Result<DistillStage> {
        let d = &ctx.cfg.distill;
        // Without a Stage II the base is the teacher already: no second copy.
        let teacher = match (d.unpruned, base_path(ctx).1) {
            (UnprunedSource::Teacher, Stage::Pruning) => {
                Some(ctx.load_input(&ctx.teacher, Stage::Pretrain)?)
            }
            _ => None,
        };
        let mut roles = Roles::new(
            base,
            teacher.as_ref(),
            removed,
            d,
            ctx.null_prompt.clone(),
            ctx.comm,
            |m| ctx.shard(m),
        );
        drop(teacher);
        if d.gan.weight > 0.0 {
            roles.gan = Some(GanClassifier::new(
                &d.gan,
                &roles.fake.model,
                &roles.fake_ids,
                ctx.cfg.experiment.seed,
                d.steps,
                ctx.comm,
            )?);
        }
        if ctx.lead() {
            tracing::info!(generator_blocks = ?roles.pruned_ids, removed = ?removed, steps = d.steps, sampler = d.sampler.name(), unpruned = d.unpruned.name(), fake_score = d.fake_score.name(), guidance = d.guidance.name(), "Stage III: distribution matching");
        }
        let pairs = if d.regression.weight > 0.0 {
            let times = sampler_times(d);
            Some(OdePairs::load_or_make(
                &ctx.run_dir.ode_pairs(),
                &d.regression,
                &times[..times.len() - 1],
                ctx.cfg.experiment.seed,
                &ctx.data,
                &TeacherPass {
                    model: roles.unpruned_model(),
                    blocks: &roles.full_ids,
                    comm: ctx.comm,
                    batch: ctx.cfg.eval.batch_size as usize,
                    device: ctx.device,
                    null: &ctx.null_prompt,
                },
            )?)
        } else {
            None
        };
        Ok(DistillStage {
            roles,
            pairs,
            monitor: Monitor::new(ctx),
            cfg: d.clone(),
            seed: ctx.cfg.experiment.seed,
            last_generator_loss: f64::NAN,
        })
    }

    pub fn loader(ctx: &StageCtx) -> Result<Loader> {
        Loader::new(
            ctx.data.clone(),
            ctx.cfg.experiment.seed ^ crate::train::stage_id::DISTILL,
            ctx.cfg.distill.batch_size,
            ctx.comm.rank() as u64,
            ctx.comm.world() as u64,
        )
        .map_err(anyhow::Error::from)
    }

    /// Rank 0 writes the generator's EMA with its sampler.
    pub fn finish(&self, ctx: &StageCtx) -> Result<PathBuf> {
        let out = ctx.run_dir.generator();
        let model = self.roles.generator.averaged_dit(ctx.comm);
        ctx.save_model(&model, &out, Some(sampler_settings(&self.cfg)))?;
        ctx.comm.barrier();
        Ok(out)
    }
}

impl TrainingStage for DistillStage {
    fn stage(&self) -> Stage {
        Stage::Distill
    }

    fn steps(&self) -> u64 {
        self.cfg.steps
    }

    fn batch_size(&self) -> u64 {
        self.cfg.batch_size
    }

    fn step(&mut self, ctx: &StageCtx, loader: &mut Loader, s: u64) -> Result<StepOutput> {
        let batch = loader.next_batch();
        let (x0, text) = batch_tensors(&batch, &ctx.data, ctx.device);
        let r = step(
            &mut self.roles,
            ctx.comm,
            &self.cfg,
            self.seed,
            s,
            &x0,
            &text,
            self.pairs.as_ref(),
            ctx.cfg.cluster.micro_batch_size,
        );
        if let Some((g, _)) = r.generator {
            self.last_generator_loss = g;
        }
        let mut line = serde_json::json!({
            "fake_loss": r.fake_loss, "fake_grad_norm": r.fake_grad_norm,
            "k": r.draw.k, "b1": r.draw.b1, "b2": r.draw.b2,
        });
        let mut values = vec![("fake_loss", r.fake_loss)];
        if let Some((g, n)) = r.generator {
            line["generator_loss"] = g.into();
            line["generator_grad_norm"] = n.into();
            values.push(("generator_loss", g));
        }
        if let Some(l) = r.regression {
            line["regression_loss"] = l.into();
            values.push(("regression_loss", l));
        }
        if let Some(l) = r.data_forcing {
            line["data_forcing_loss"] = l.into();
            values.push(("data_forcing_loss", l));
        }
        if let Some(g) = r.gan_generator {
            line["gan_generator_loss"] = g.loss.into();
            line["gan_grad_ratio"] = g.grad_ratio.into();
            values.push(("gan_generator_loss", g.loss));
        }
        if let Some(c) = r.gan_classifier {
            line["gan_classifier_loss"] = c.loss.into();
            line["gan_classifier_accuracy"] = c.accuracy.into();
            values.push(("gan_classifier_loss", c.loss));
        }
        if let Some(m) = self.monitor.as_ref().filter(|m| m.due(s + 1)) {
            let times = sampler_times(&self.cfg);
            let diversity = m.diversity(
                ctx,
                &self.roles.generator.model,
                times[0],
                &self.roles.pruned_ids,
            );
            let model = self.roles.generator.averaged_dit(ctx.comm);
            let how = crate::sample::Sampling {
                times,
                cfg: 1.0,
                null: ctx.null_prompt.clone(),
                kind: self.cfg.sampler,
                seed: self.seed,
            };
            let mut monitor = serde_json::json!({ "diversity": diversity });
            if let Some(e) = m.eval(ctx, &model, &how) {
                monitor["average"] = e.average.into();
                monitor["frechet_distance"] = e.frechet_distance.into();
                monitor["directions_per_class"] = e.directions_per_class.into();
                for (name, v) in e.scores.named() {
                    monitor[name] = v.into();
                }
            }
            line["monitor"] = monitor;
        }
        Ok(StepOutput {
            values,
            line: Some(line),
            message: Some(format!(
                "distill {:.3}/{:.3}",
                r.fake_loss, self.last_generator_loss
            )),
        })
    }

    fn roles(&self) -> Vec<(&'static str, &Role)> {
        let mut roles = vec![
            ("generator", &self.roles.generator),
            ("fake", &self.roles.fake),
        ];
        if let Some(c) = &self.roles.gan {
            roles.push(("gan_classifier", &c.role));
        }
        roles
    }

    fn roles_mut(&mut self) -> Vec<(&'static str, &mut Role)> {
        let mut roles = vec![
            ("generator", &mut self.roles.generator),
            ("fake", &mut self.roles.fake),
        ];
        if let Some(c) = &mut self.roles.gan {
            roles.push(("gan_classifier", &mut c.role));
        }
        roles
    }
}

/// Runs Stage III; rank 0 writes the generator's EMA to `distill/generator.safetensors`.
pub fn run(ctx: &StageCtx) -> Result<PathBuf> {
    let (base_file, made_by) = base_path(ctx);
    if ctx.lead() {
        tracing::info!(weights = %base_file.display(), "Stage III starts from");
        // The choice follows `experiment.stages`, not what the run directory holds: a config
        // that lists no pruning stage starts from the teacher (the "no Stage II" baseline) even
        // beside a Stage II model, which is easy to do by accident when rerunning Stage III
        // alone with a trimmed stage list.
        let stage2 = ctx.run_dir.pruned_model();
        if made_by != Stage::Pruning && stage2.exists() {
            tracing::warn!(
                unused = %stage2.display(),
                "experiment.stages lists no \"pruning\" stage, so Stage III starts from the teacher and ignores the Stage II model in the run directory; list \"pruning\" in experiment.stages and pass --stage distill to start from it"
            );
        }
    }
    let base = ctx.load_input(&base_file, made_by)?;
    let removed = removed_blocks(ctx)?;
    let mut stage = DistillStage::new(ctx, &base, &removed)?;
    drop(base);
    let mut loader = DistillStage::loader(ctx)?;
    crate::trainer::train(ctx, &mut stage, &mut loader)?;
    stage.finish(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;
    use tch::Device;

    use crate::testing::live_model;

    /// One generator step from the pruned base with b1 = `b1`, b2 = 0 and the data-forcing
    /// weight `data_forcing`.
    fn generator_step(b1: f64, data_forcing: f64) -> StepReport {
        run_step(Distill {
            b1_range: [b1, b1],
            b2_range: [0.0, 0.0],
            data_forcing,
            ..Distill::default()
        })
    }

    /// One generator step of a 1-step, batch-2 Stage III with `d`'s other settings, block 1 removed.
    fn run_step(d: Distill) -> StepReport {
        let base = live_model();
        let d = Distill {
            steps: 1,
            batch_size: 2,
            generator_every: 1,
            ..d
        };
        let mut roles = Roles::new(&base, None, &[1], &d, NullPrompt::zeros(), &Solo, |m| {
            ShardedDit::from_dit(m, &Solo, Device::Cpu, Kind::Float)
        });
        tch::manual_seed(0);
        let x0 = Tensor::randn([2, 3, 8, 16, 16], (Kind::Float, Device::Cpu));
        let text = Tensor::randn([2, 4, 32], (Kind::Float, Device::Cpu));
        step(&mut roles, &Solo, &d, 0, 0, &x0, &text, None, 0)
    }

    /// The DMD loss and gradient norm of [`generator_step`] without data forcing.
    fn one_step(b1: f64) -> (f64, f64) {
        generator_step(b1, 0.0).generator.expect("a generator step")
    }

    #[test]
    fn a_fake_score_equal_to_the_real_one_gives_the_generator_no_gradient() {
        // Fake and generator start as the pruned base; with b1 = 1, b2 = 0 the real score is the
        // same pruned base on the prompt: the two scores agree (up to float rounding of the
        // batched passes), so DMD has nothing to correct.
        let (loss, norm) = one_step(1.0);
        assert!(
            loss < 1e-12 && norm < 1e-5,
            "loss {loss}, gradient norm {norm}"
        );
        // With guidance the real score differs from the fake one and the generator is pushed.
        let (loss, norm) = one_step(4.0);
        assert!(
            loss > 1e-6 && norm > 1e-3,
            "loss {loss}, gradient norm {norm}"
        );
    }

    #[test]
    fn a_full_size_fake_score_has_every_block_and_matches_the_unpruned_pass() {
        // With `fake_score = "full"` the fake score starts as the whole base. With b1 = b2 = 1
        // the real score is the base's full pass U(c): the two agree, so DMD has nothing to
        // correct; the generator's own blocks would not agree with U (the test above's b1 = 4
        // case shows a disagreement does give a gradient).
        let d = Distill {
            fake_score: FakeScoreBlocks::Full,
            b1_range: [1.0, 1.0],
            b2_range: [1.0, 1.0],
            ..Distill::default()
        };
        let base = live_model();
        let roles = Roles::new(&base, None, &[1], &d, NullPrompt::zeros(), &Solo, |m| {
            ShardedDit::from_dit(m, &Solo, Device::Cpu, Kind::Float)
        });
        assert_eq!(roles.fake_ids, base.block_ids);
        assert_ne!(roles.pruned_ids, base.block_ids);
        let (loss, norm) = run_step(d.clone()).generator.expect("a generator step");
        assert!(
            loss < 1e-12 && norm < 1e-5,
            "loss {loss}, gradient norm {norm}"
        );
        // The generator-sized fake score against the same real score does get a gradient.
        let d = Distill {
            fake_score: FakeScoreBlocks::Generator,
            ..d
        };
        let (loss, norm) = run_step(d).generator.expect("a generator step");
        assert!(
            loss > 1e-6 && norm > 1e-3,
            "loss {loss}, gradient norm {norm}"
        );
    }

    #[test]
    fn data_forcing_pulls_the_generator_only_where_it_differs_from_the_guided_real_score() {
        // The generator starts as the real score's pruned pass: with b1 = 1, b2 = 0 it predicts
        // what the real score predicts on noised data, and the term is zero; with guidance
        // (b1 = 4) it is not, and the generator gets a gradient from it alone.
        let run = |b1: f64| {
            generator_step(b1, 1.0)
                .data_forcing
                .expect("a data-forcing loss on a generator step")
        };
        let same = run(1.0);
        assert!(same < 1e-10, "{same}");
        let guided = run(4.0);
        assert!(guided > 1e-6, "{guided}");
    }

    #[test]
    fn the_unpruned_pass_comes_from_the_model_it_is_given() {
        // With b1 = b2 = 1 the real velocity is exactly U(c): the teacher's full pass when the
        // roles are given a teacher, the base's own full pass when not.
        let base = live_model();
        let teacher = Dit::init(&base.dims, 11);
        let shard = |m: &Dit| ShardedDit::from_dit(m, &Solo, Device::Cpu, Kind::Float);
        let d = Distill::default();
        tch::manual_seed(1);
        let xt = Tensor::randn([2, 3, 8, 16, 16], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0.7f32, 0.3]);
        let text = Tensor::randn([2, 4, 32], (Kind::Float, Device::Cpu));
        let draw = StepDraw {
            k: 0,
            b1: 1.0,
            b2: 1.0,
        };
        let full = |m: &Dit| shard(m).output(&Solo, &xt, &t, &text, &m.block_ids);
        let (u_teacher, u_base) = (full(&teacher), full(&base));
        let gap = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(gap(&u_teacher, &u_base) > 1e-3, "the two models differ");
        for (given, want) in [(Some(&teacher), &u_teacher), (None, &u_base)] {
            let roles = Roles::new(&base, given, &[1], &d, NullPrompt::zeros(), &Solo, shard);
            let v = real_velocity(&roles, &Solo, &xt, &t, &text, d.guidance, draw);
            assert!(gap(&v, want) < 1e-5, "off by {}", gap(&v, want));
        }
    }

    #[test]
    fn the_guidance_comes_from_the_pass_the_config_names() {
        // v = S(null) + b1 (S(c) - S(null)) + b2 (U(c) - P(c)), S = P or U, against the four
        // passes run by hand.
        let base = live_model();
        let shard = |m: &Dit| ShardedDit::from_dit(m, &Solo, Device::Cpu, Kind::Float);
        let d = Distill::default();
        tch::manual_seed(2);
        let xt = Tensor::randn([2, 3, 8, 16, 16], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0.8f32, 0.4]);
        let text = Tensor::randn([2, 4, 32], (Kind::Float, Device::Cpu));
        let null = Tensor::zeros_like(&text);
        let roles = Roles::new(&base, None, &[1], &d, NullPrompt::zeros(), &Solo, shard);
        let pass = |ids: &Vec<usize>, c: &Tensor| roles.real.output(&Solo, &xt, &t, c, ids);
        let (p_c, p_null) = (
            pass(&roles.pruned_ids, &text),
            pass(&roles.pruned_ids, &null),
        );
        let (u_c, u_null) = (pass(&roles.full_ids, &text), pass(&roles.full_ids, &null));
        let draw = StepDraw {
            k: 0,
            b1: 3.0,
            b2: 0.5,
        };
        let intra = (&u_c - &p_c) * 0.5;
        let want_pruned = &p_null + (&p_c - &p_null) * 3.0 + &intra;
        let want_unpruned = &u_null + (&u_c - &u_null) * 3.0 + &intra;
        let gap = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(
            gap(&want_pruned, &want_unpruned) > 1e-3,
            "the two passes differ"
        );
        for (g, want) in [
            (GuidancePass::Pruned, &want_pruned),
            (GuidancePass::Unpruned, &want_unpruned),
        ] {
            let v = real_velocity(&roles, &Solo, &xt, &t, &text, g, draw);
            assert!(
                gap(&v, want) < 1e-5,
                "{}: off by {}",
                g.name(),
                gap(&v, want)
            );
        }
    }

    #[test]
    fn the_sampler_times_are_the_shifted_steps_then_zero() {
        let d = Distill {
            shift: 3.0,
            ..Distill::default()
        };
        let t = sampler_times(&d);
        assert_eq!(t.len(), 5);
        assert_eq!(t[0], 1.0);
        assert_eq!(t[4], 0.0);
        assert!((t[2] - flow::shift_scalar(0.5, 3.0)).abs() < 1e-12);
        let s = sampler_settings(&d);
        assert_eq!(s.timesteps, t[..4].to_vec());
        assert_eq!((s.cfg, s.steps, s.shift), (1.0, Some(4), Some(3.0)));
    }
}
