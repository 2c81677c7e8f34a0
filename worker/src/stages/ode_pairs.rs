//! Stage III's regression pairs: noise -> the teacher's ODE sample from that noise (DMD's
//! anchor against mode collapse, docs/method.md), with the ODE's states at the student's
//! sampler times on the way, so that every sampler step has a regression target (the ODE
//! state at its time -> the clean video the ODE reaches from there, as consistency
//! distillation trains it).
//!
//! Made once at the start of Stage III by all ranks (each samples its share of the pairs with
//! the real score's unpruned pass under CFG, then every rank gathers all of them), written by
//! rank 0 to `distill/ode-pairs.safetensors` and read back by a resumed or rerun stage. Pair i's
//! noise and its prompt (that of a data sample drawn uniformly) are functions of `(seed, i)`,
//! so the file is the same whoever makes it. Its header records the settings and a fingerprint
//! of the model that made it (the Stage II model's full pass or the teacher, see
//! `distill.unpruned`): a file made by another model, or with other settings, is made again.

use crate::collective::Collective;
use crate::data::{Batch, DataSet};
use crate::flow;
use crate::rng::Rng;
use crate::shard::ShardedDit;
use crate::train::{batch_tensors, draws};
use anyhow::{Context, Result};
use flg_core::config::Regression;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Stream tags: the pairs' noise (as a stage number of `draws`) and the per-step pick.
const PAIR_NOISE: u64 = 0x5041_4952; // "PAIR"
const PAIR_PICK: u64 = 0x5049_434b; // "PICK"
const PAIR_PROMPT: u64 = 0x5052_4d54; // "PRMT"

/// The model that makes the trajectories, as every rank holds it: the sharded teacher, the
/// blocks it runs, the ranks, videos per call and where the tensors live.
pub struct TeacherPass<'a> {
    pub model: &'a ShardedDit,
    pub blocks: &'a [usize],
    pub comm: &'a dyn Collective,
    pub batch: usize,
    pub device: Device,
    /// The prompt its CFG contrasts with.
    pub null: &'a crate::flow::NullPrompt,
}

/// The pairs, whole on every rank: the ODE's states at the student's times [N, K, ...] (state
/// 0 is the noise), prompts [N, L, D], the ODE's clean videos [N, ...].
pub struct OdePairs {
    pub states: Tensor,
    pub text: Tensor,
    pub target: Tensor,
}

impl OdePairs {
    pub fn len(&self) -> usize {
        self.states.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the pairs at `path` when they are there and match `r`, the student's `times`
    /// (from 1 towards 0, without the final 0), the data's shapes and the seed; else makes them
    /// with `teacher` (its `blocks`) and rank 0 writes them.
    pub fn load_or_make(
        path: &Path,
        r: &Regression,
        times: &[f64],
        seed: u64,
        data: &DataSet,
        teacher: &TeacherPass,
    ) -> Result<OdePairs> {
        let want = Header::new(r, times, seed, teacher.fingerprint());
        if let Some(p) = read(path, &want, data, teacher.device)? {
            return Ok(p);
        }
        let pairs = make(r, times, seed, data, teacher);
        if teacher.comm.rank() == 0 {
            write(path, &pairs, &want).with_context(|| format!("writing {}", path.display()))?;
        }
        teacher.comm.barrier();
        Ok(pairs)
    }

    /// This rank's `b` pairs of step `step` (global samples `first..first + b`), each picked
    /// uniformly by `(seed, step, sample)`: (the ODE states at the student's time `k`, prompts,
    /// the clean videos).
    pub fn pick(
        &self,
        seed: u64,
        step: u64,
        first: usize,
        b: usize,
        k: usize,
    ) -> (Tensor, Tensor, Tensor) {
        let n = self.len() as u64;
        let idx: Vec<i64> = (first..first + b)
            .map(|j| Rng::derive(seed, &[PAIR_PICK, step, j as u64]).below(n) as i64)
            .collect();
        let idx = Tensor::from_slice(&idx).to_device(self.states.device());
        (
            self.states.select(1, k as i64).index_select(0, &idx),
            self.text.index_select(0, &idx),
            self.target.index_select(0, &idx),
        )
    }
}

/// What the pairs were made with; a file made otherwise is made again.
#[derive(PartialEq, Debug)]
struct Header {
    pairs: u64,
    teacher_steps: u64,
    teacher_cfg: f64,
    seed: u64,
    times: Vec<f64>,
    model: [f64; 3],
}

impl Header {
    fn new(r: &Regression, times: &[f64], seed: u64, model: [f64; 3]) -> Header {
        Header {
            pairs: r.pairs,
            teacher_steps: r.teacher_steps,
            teacher_cfg: r.teacher_cfg,
            seed,
            times: times.to_vec(),
            model,
        }
    }

    fn tensor(&self) -> Tensor {
        let mut v = vec![
            self.pairs as f64,
            self.teacher_steps as f64,
            self.teacher_cfg,
            self.seed as f64,
        ];
        v.extend(&self.times);
        v.extend(&self.model);
        Tensor::from_slice(&v)
    }
}

impl TeacherPass<'_> {
    /// Which model this is, as three numbers every rank computes alike whatever the world
    /// size: the number of blocks it runs, and the sum and the sum of squares (f64) of the
    /// parameters of its stem and those blocks, gathered whole.
    pub fn fingerprint(&self) -> [f64; 3] {
        let _guard = tch::no_grad_guard();
        let (mut sum, mut sq) = (0.0, 0.0);
        let units = std::iter::once(0).chain(self.blocks.iter().map(|&b| self.model.unit_index(b)));
        for i in units {
            for t in self.model.gather_unit(i, self.comm) {
                let t = t.to_kind(Kind::Double);
                sum += t.sum(Kind::Double).double_value(&[]);
                sq += t.square().sum(Kind::Double).double_value(&[]);
            }
        }
        [self.blocks.len() as f64, sum, sq]
    }
}

fn read(path: &Path, want: &Header, data: &DataSet, device: Device) -> Result<Option<OdePairs>> {
    if !path.exists() {
        return Ok(None);
    }
    let named = match Tensor::read_safetensors(path) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(
                "{}: unreadable ({e}); making the pairs again",
                path.display()
            );
            return Ok(None);
        }
    };
    let get = |name: &str| named.iter().find(|(k, _)| k == name).map(|(_, t)| t);
    let (Some(h), Some(states), Some(text), Some(target)) =
        (get("header"), get("states"), get("text"), get("target"))
    else {
        return Ok(None);
    };
    let n = want.pairs as i64;
    let k = want.times.len() as i64;
    let [c, t, hh, w] = data.latent_shape();
    let [l, d] = data.text_shape();
    let want_header = want.tensor();
    let fits = h.size() == want_header.size()
        && h.equal(&want_header)
        && states.size() == [n, k, c, t, hh, w]
        && target.size() == [n, c, t, hh, w]
        && text.size() == [n, l, d];
    if !fits {
        return Ok(None);
    }
    Ok(Some(OdePairs {
        states: states.to_device(device),
        text: text.to_device(device),
        target: target.to_device(device),
    }))
}

fn write(path: &Path, p: &OdePairs, h: &Header) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let cpu = |t: &Tensor| t.to_device(Device::Cpu);
    Tensor::write_safetensors(
        &[
            ("header", h.tensor()),
            ("states", cpu(&p.states)),
            ("text", cpu(&p.text)),
            ("target", cpu(&p.target)),
        ],
        &tmp,
    )?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Every rank samples `ceil(N / W)` pairs (the last rank's tail repeats pair N - 1 so that all
/// ranks call the sharded teacher equally often), then all are gathered.
fn make(
    r: &Regression,
    student_times: &[f64],
    seed: u64,
    data: &DataSet,
    teacher: &TeacherPass,
) -> OdePairs {
    let TeacherPass {
        model: teacher,
        blocks,
        comm,
        batch,
        device,
        null,
    } = *teacher;
    let n = r.pairs as usize;
    let (rank, world) = (comm.rank(), comm.world());
    let per = n.div_ceil(world);
    let len = data.len();
    let mine: Vec<usize> = (rank * per..(rank + 1) * per)
        .map(|i| i.min(n - 1))
        .collect();
    let shape = data.latent_shape();
    // The teacher's grid: each student interval [t_k, t_k+1] (the last one to 0) split into
    // Euler steps in proportion to its length, `teacher_steps` in all (at least one each).
    let ends: Vec<f64> = student_times.iter().copied().chain([0.0]).collect();
    let segments: Vec<Vec<f64>> = ends
        .windows(2)
        .map(|w| {
            let m = ((r.teacher_steps as f64 * (w[0] - w[1])).round() as usize).max(1);
            (0..=m)
                .map(|i| w[0] + (w[1] - w[0]) * i as f64 / m as f64)
                .collect()
        })
        .collect();
    let v = |x: &Tensor, t: &Tensor, c: &Tensor| teacher.output(comm, x, t, c, blocks);
    let start = std::time::Instant::now();
    let (mut all_states, mut texts, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in mine.chunks(batch.max(1)) {
        let idx: Vec<u64> = chunk.iter().map(|&i| prompt_index(seed, i, len)).collect();
        let (_, text) = batch_tensors(&Batch::gather(data, &idx), data, device);
        let noise = Tensor::stack(
            &chunk
                .iter()
                .map(|&i| {
                    draws(seed, PAIR_NOISE, 0, i, 1, &shape, device)
                        .eps
                        .squeeze_dim(0)
                })
                .collect::<Vec<_>>(),
            0,
        );
        let mut x = noise;
        let mut states = Vec::with_capacity(segments.len());
        for seg in &segments {
            states.push(x.shallow_clone());
            x = flow::euler_sample(&v, &x, &text, null, seg, r.teacher_cfg);
        }
        all_states.push(Tensor::stack(&states, 1));
        texts.push(text);
        targets.push(x);
    }
    let gather = |parts: Vec<Tensor>| {
        let local = Tensor::cat(&parts, 0);
        let mut size = local.size();
        let all = comm.all_gather(&local.reshape([-1]));
        size[0] = (per * world) as i64;
        all.view(size.as_slice()).narrow(0, 0, n as i64)
    };
    let pairs = OdePairs {
        states: gather(all_states),
        text: gather(texts),
        target: gather(targets),
    };
    if comm.rank() == 0 {
        tracing::info!(
            pairs = n,
            teacher_steps = r.teacher_steps,
            cfg = r.teacher_cfg,
            seconds = start.elapsed().as_secs_f64(),
            "Stage III: the teacher's ODE samples for the regression term"
        );
    }
    pairs
}

/// The data sample whose prompt pair i takes: drawn uniformly by `(seed, i)`. (A regular
/// stride would follow any period in the data's order: moving-shapes stores its classes in
/// turn, so every 16th sample is one class.)
pub fn prompt_index(seed: u64, i: usize, len: u64) -> u64 {
    Rng::derive(seed, &[PAIR_PROMPT, i as u64]).below(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pairs_prompts_cover_every_class_of_moving_shapes() {
        // Moving-shapes sample i has class i % 8; 256 pairs of a 4096-video set.
        let mut per_class = [0usize; 8];
        for i in 0..256 {
            per_class[(prompt_index(0, i, 4096) % 8) as usize] += 1;
        }
        assert!(
            per_class.iter().all(|&c| (16..=48).contains(&c)),
            "{per_class:?}"
        );
    }

    #[test]
    fn pairs_made_by_another_model_are_made_again() {
        // A run directory's pairs are reused only when the model that would make them is the
        // one that made them: pairs of the Stage II model's full pass must not stand in for the
        // teacher's (distill.unpruned) or for another Stage II's.
        use crate::collective::Solo;
        use crate::data::shapes::ShapesSpec;
        use crate::model::Dit;
        let dir = tempfile::tempdir().unwrap();
        crate::data::write_moving_shapes(dir.path(), &ShapesSpec::for_tests(), 16, 16, false)
            .unwrap();
        let data = DataSet::open(dir.path()).unwrap();
        let mut dims = flg_core::config::preset("tiny").unwrap();
        dims.num_blocks = 2;
        let shard =
            |seed| ShardedDit::from_dit(&Dit::init(&dims, seed), &Solo, Device::Cpu, Kind::Float);
        let (a, b) = (shard(1), shard(2));
        let null = crate::flow::NullPrompt::zeros();
        fn pass<'a>(m: &'a ShardedDit, null: &'a crate::flow::NullPrompt) -> TeacherPass<'a> {
            TeacherPass {
                model: m,
                blocks: &[0, 1],
                comm: &Solo,
                batch: 4,
                device: Device::Cpu,
                null,
            }
        }
        let r = Regression {
            weight: 1.0,
            pairs: 3,
            teacher_steps: 2,
            teacher_cfg: 2.0,
        };
        let path = dir.path().join("ode-pairs.safetensors");
        let times = [1.0, 0.5];
        let made = OdePairs::load_or_make(&path, &r, &times, 0, &data, &pass(&a, &null)).unwrap();
        // Mark the file's targets, keeping its header: a read returns the mark.
        let header = Tensor::read_safetensors(&path)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == "header")
            .unwrap()
            .1;
        let marked = OdePairs {
            states: made.states.shallow_clone(),
            text: made.text.shallow_clone(),
            target: made.target.zeros_like(),
        };
        let h = Header::new(&r, &times, 0, pass(&a, &null).fingerprint());
        assert!(h.tensor().equal(&header), "the header as written");
        write(&path, &marked, &h).unwrap();
        let again = OdePairs::load_or_make(&path, &r, &times, 0, &data, &pass(&a, &null)).unwrap();
        assert_eq!(again.target.abs().sum(Kind::Double).double_value(&[]), 0.0);
        let other = OdePairs::load_or_make(&path, &r, &times, 0, &data, &pass(&b, &null)).unwrap();
        assert!(other.target.abs().sum(Kind::Double).double_value(&[]) > 0.0);
        assert!(pass(&a, &null).fingerprint() != pass(&b, &null).fingerprint());
    }
}
