//! A rank's half of checkpointing: its shards of every trained role (parameters, AdamW
//! moments and counts, EMA), the data-loader position and the step, in one safetensors file
//! per rank; and restoring them, re-sharding when the world size changed.
//!
//! Taking a checkpoint costs the training step only the copy out of the model
//! ([`snapshot`]); serialising, writing, fsync, hashing and the commit call happen on the
//! [`Writer`] thread while training goes on. All randomness of a step is derived from
//! `(seed, stage, step)` (see `train::draws`), so the step number is the whole RNG state.

use crate::control::Control;
use crate::data::{DataPosition, Loader};
use crate::faults;
use crate::shard::UnitLayout;
use crate::train::Role;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tch::{Device, Kind, Tensor};

const META_KEY: &str = "fastlightgen.checkpoint";

/// One role's optimizer bookkeeping and unit sizes (the same on every rank).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoleMeta {
    /// Per unit: elements of the whole unit, and of this rank's shard.
    pub numel: Vec<i64>,
    pub shard_len: Vec<i64>,
    pub opt_step: u64,
    pub counts: Vec<u64>,
    pub ema: bool,
}

/// The metadata of one rank's checkpoint file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardMeta {
    pub format: u32,
    pub stage: String,
    pub step: u64,
    pub global_step: u64,
    pub rank: u32,
    pub world: u32,
    /// The run's seed: with `(stage, step)` it determines every random draw that follows.
    pub seed: u64,
    pub roles: BTreeMap<String, RoleMeta>,
    pub data: Option<DataPosition>,
    /// Stage-specific numbers a resumed stage needs (e.g. Stage II's held-out gap before).
    pub extra: BTreeMap<String, f64>,
}

/// What a training stage hands over at a step boundary.
pub struct TrainState<'a> {
    pub roles: Vec<(&'a str, &'a Role)>,
    pub data: Option<DataPosition>,
    pub extra: Vec<(&'a str, f64)>,
}

/// A rank's checkpoint, copied out of the model and ready to be written.
pub struct Snapshot {
    pub meta: ShardMeta,
    pub tensors: Vec<(String, Tensor)>,
}

fn key(role: &str, unit: usize, what: &str) -> String {
    format!("{role}/{unit:03}/{what}")
}

fn host_copy(t: &Tensor) -> Tensor {
    // `copy` after a CPU move: a tensor of its own, never a view of the live shard.
    t.detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .copy()
}

/// Copies this rank's training state out of the models (the only part the step waits for).
pub fn snapshot(
    state: &TrainState,
    stage: &str,
    step: u64,
    global_step: u64,
    rank: u32,
    world: u32,
    seed: u64,
) -> Snapshot {
    let _guard = tch::no_grad_guard();
    let mut tensors = Vec::new();
    let mut roles = BTreeMap::new();
    for (name, role) in &state.roles {
        let (m, v) = role.opt.moments();
        for (i, u) in role.model.units.iter().enumerate() {
            tensors.push((key(name, i, "param"), host_copy(&u.shard)));
            tensors.push((key(name, i, "m"), host_copy(&m[i])));
            tensors.push((key(name, i, "v"), host_copy(&v[i])));
            if let Some(e) = &role.ema {
                tensors.push((key(name, i, "ema"), host_copy(&e.shadow[i])));
            }
        }
        roles.insert(
            name.to_string(),
            RoleMeta {
                numel: role.model.units.iter().map(|u| u.layout.numel).collect(),
                shard_len: role
                    .model
                    .units
                    .iter()
                    .map(|u| u.layout.shard_len)
                    .collect(),
                opt_step: role.opt.step,
                counts: role.opt.counts().to_vec(),
                ema: role.ema.is_some(),
            },
        );
    }
    Snapshot {
        meta: ShardMeta {
            format: 1,
            stage: stage.into(),
            step,
            global_step,
            rank,
            world,
            seed,
            roles,
            data: state.data,
            extra: state
                .extra
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        },
        tensors,
    }
}

/// The file name of rank `rank`'s shards.
pub fn shard_file_name(rank: u32) -> String {
    format!("rank-{rank:05}.safetensors")
}

/// A snapshot as safetensors bytes.
pub fn serialize(s: &Snapshot) -> Result<Vec<u8>> {
    let info = HashMap::from([(META_KEY.to_string(), serde_json::to_string(&s.meta)?)]);
    crate::model::file::safetensors_bytes(&s.tensors, info)
}

enum Job {
    Write {
        snapshot: Snapshot,
        tmp_name: String,
    },
    Flush(mpsc::Sender<()>),
}

/// The background thread that writes this rank's checkpoint files and reports them.
pub struct Writer {
    tx: mpsc::Sender<Job>,
    error: Arc<Mutex<Option<String>>>,
}

impl Writer {
    pub fn start(control: Arc<Control>, checkpoints_dir: PathBuf) -> Writer {
        let (tx, rx) = mpsc::channel::<Job>();
        let error = Arc::new(Mutex::new(None));
        let err = error.clone();
        std::thread::Builder::new()
            .name("flg-checkpoint".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Write { snapshot, tmp_name } => {
                            if let Err(e) =
                                write_and_report(&control, &checkpoints_dir, &tmp_name, &snapshot)
                            {
                                let mut slot = err.lock().unwrap_or_else(|p| p.into_inner());
                                slot.get_or_insert(format!("{e:#}"));
                            }
                        }
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("spawning the checkpoint writer");
        Writer { tx, error }
    }

    /// Queues a snapshot for writing (returns at once).
    pub fn submit(&self, snapshot: Snapshot, tmp_name: String) {
        let _ = self.tx.send(Job::Write { snapshot, tmp_name });
    }

    /// The first error a write met, if any (taken).
    pub fn take_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Waits until every queued checkpoint is written and reported.
    pub fn flush(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Job::Flush(tx))
            .map_err(|_| anyhow!("the checkpoint writer thread is gone"))?;
        rx.recv()
            .map_err(|_| anyhow!("the checkpoint writer thread is gone"))?;
        match self.take_error() {
            Some(e) => Err(anyhow!("writing a checkpoint: {e}")),
            None => Ok(()),
        }
    }
}

/// Writes a snapshot as `dir/rank-<r>.safetensors` (fsynced), returning the file's entry
/// (name, size, sha256). `generation` only selects fault injection.
pub fn write_shard(dir: &Path, s: &Snapshot, generation: u32) -> Result<flg_proto::ShardFile> {
    let bytes = serialize(s)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = shard_file_name(s.meta.rank);
    let path = dir.join(&name);
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let half = bytes.len() / 2;
    f.write_all(&bytes[..half])?;
    f.flush()?;
    faults::in_checkpoint(s.meta.rank, generation, &s.meta.stage, s.meta.step);
    f.write_all(&bytes[half..])?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(flg_proto::ShardFile {
        path: name,
        bytes: bytes.len() as u64,
        sha256: flg_core::settings::hex(&Sha256::digest(&bytes)),
    })
}

fn write_and_report(
    control: &Control,
    checkpoints_dir: &Path,
    tmp_name: &str,
    s: &Snapshot,
) -> Result<()> {
    let file = write_shard(&checkpoints_dir.join(tmp_name), s, control.generation)?;
    control.commit_shard(
        &s.meta.stage,
        s.meta.step,
        s.meta.global_step,
        tmp_name,
        vec![file],
    )
}

/// A committed checkpoint opened for restoring on rank `rank` of `world`.
pub struct Loaded {
    pub meta: ShardMeta,
    /// The old ranks' tensors: only this rank's file when the world size is unchanged, every
    /// file when it changed (each new shard is cut from the old ones' concatenation).
    files: Vec<HashMap<String, Tensor>>,
    same_world: bool,
    rank: usize,
    world: usize,
}

fn read_meta(path: &Path) -> Result<ShardMeta> {
    let text = crate::model::file::metadata_entry(path, META_KEY)?
        .ok_or_else(|| anyhow!("{}: not a fastlightgen checkpoint shard", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: bad checkpoint metadata: {e}", path.display()))
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path)
        .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?
        .into_iter()
        .collect())
}

impl Loaded {
    pub fn open(dir: &Path, rank: usize, world: usize) -> Result<Loaded> {
        let manifest = flg_core::checkpoint::read_manifest(dir).map_err(|e| anyhow!(e))?;
        let old_world = manifest.world_size as usize;
        let file_of = |r: usize| -> Result<PathBuf> {
            manifest
                .files
                .iter()
                .find(|f| f.rank as usize == r)
                .map(|f| dir.join(&f.path))
                .ok_or_else(|| anyhow!("{}: the manifest lists no file of rank {r}", dir.display()))
        };
        let same_world = old_world == world;
        let ranks: Vec<usize> = if same_world {
            vec![rank]
        } else {
            (0..old_world).collect()
        };
        let mut files = Vec::new();
        for r in &ranks {
            files.push(read_tensors(&file_of(*r)?)?);
        }
        let meta = read_meta(&file_of(ranks[0])?)?;
        Ok(Loaded {
            meta,
            files,
            same_world,
            rank,
            world,
        })
    }

    /// This rank's shard of `role`'s unit `unit` (`what`: param, m, v, ema) in `layout`
    /// (this launch's; the old ranks' shards are joined and cut again when the world changed).
    fn shard(&self, role: &str, unit: usize, what: &str, layout: &UnitLayout) -> Result<Tensor> {
        let k = key(role, unit, what);
        let get = |f: &HashMap<String, Tensor>| {
            f.get(&k)
                .map(|t| t.shallow_clone())
                .ok_or_else(|| anyhow!("checkpoint has no tensor {k}"))
        };
        if self.same_world {
            return get(&self.files[0]);
        }
        let parts: Vec<Tensor> = self.files.iter().map(get).collect::<Result<_>>()?;
        let full = Tensor::cat(&parts, 0).narrow(0, 0, layout.numel);
        Ok(layout
            .shard_of(&layout.flatten(&[full], self.world), self.rank)
            .copy())
    }

    /// Puts `role` back as it was: shards, AdamW moments and counts, EMA.
    fn restore_role(&self, name: &str, role: &mut Role) -> Result<()> {
        let meta = self
            .meta
            .roles
            .get(name)
            .ok_or_else(|| anyhow!("checkpoint has no role {name:?}"))?;
        let units = &role.model.units;
        if meta.numel.len() != units.len()
            || meta
                .numel
                .iter()
                .zip(units)
                .any(|(n, u)| *n != u.layout.numel)
        {
            bail!(
                "checkpoint role {name:?} has units of {:?} elements, the model {:?}: it was written for another model",
                meta.numel,
                units.iter().map(|u| u.layout.numel).collect::<Vec<_>>()
            );
        }
        let device = role.model.device;
        let (mut m, mut v, mut ema) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..units.len() {
            let layout = role.model.units[i].layout.clone();
            let load = |what: &str| -> Result<Tensor> {
                Ok(self.shard(name, i, what, &layout)?.to_device(device))
            };
            role.model.units[i].shard = load("param")?;
            role.model.units[i].grad = None;
            m.push(load("m")?);
            v.push(load("v")?);
            if meta.ema {
                ema.push(load("ema")?);
            }
        }
        role.opt.restore(meta.opt_step, meta.counts.clone(), m, v);
        match (&mut role.ema, meta.ema) {
            (Some(e), true) => e.shadow = ema,
            (None, false) => {}
            _ => bail!("checkpoint role {name:?}: EMA present in one of the checkpoint and the config only"),
        }
        Ok(())
    }

    /// Puts a training stage back where the checkpoint left it: every named role, and the
    /// loader's position. Returns the steps already done.
    pub fn restore(&self, roles: Vec<(&str, &mut Role)>, loader: &mut Loader) -> Result<u64> {
        for (name, role) in roles {
            self.restore_role(name, role)?;
        }
        if let Some(pos) = self.meta.data {
            loader.restore(pos);
        }
        Ok(self.meta.step)
    }

    pub fn extra(&self, key: &str) -> Option<f64> {
        self.meta.extra.get(key).copied()
    }
}
