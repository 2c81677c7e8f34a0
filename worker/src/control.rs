//! A rank's link to the coordinator (the WorkerHub service): registration, heartbeats from a
//! thread of their own (so a rank busy in a long step or stopped by a signal is told apart by
//! the coordinator), metrics, stage reports, checkpoint commits, and rank 0's command fetch.
//!
//! The calls are blocking: a small tokio runtime inside serves them, from any thread.

use anyhow::{anyhow, Context, Result};
use flg_core::config::Config;
use flg_proto as pb;
use pb::worker_hub_client::WorkerHubClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// What to do at a step boundary (rank 0 fetches it; every rank gets it by broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Continue,
    Pause,
    Checkpoint(CheckpointTarget),
    /// Checkpoint, then stop.
    Stop(CheckpointTarget),
}

/// The checkpoint the coordinator expects: its global step and the temporary directory
/// (under `checkpoints/`) the ranks write into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointTarget {
    pub global_step: u64,
    pub tmp_dir: String,
}

/// Longest temporary directory name a broadcast command carries.
const MAX_DIR: usize = 64;

impl Command {
    fn from_proto(c: &pb::Command) -> Result<Command> {
        use pb::command::Kind;
        let target = || -> Result<CheckpointTarget> {
            let ok = !c.tmp_dir.is_empty()
                && c.tmp_dir.len() <= MAX_DIR
                && !c.tmp_dir.contains('/')
                && !c.tmp_dir.starts_with('.');
            if !ok {
                return Err(anyhow!(
                    "the coordinator named checkpoint directory {:?}: expected a plain name of at most {MAX_DIR} bytes",
                    c.tmp_dir
                ));
            }
            Ok(CheckpointTarget {
                global_step: c.global_step,
                tmp_dir: c.tmp_dir.clone(),
            })
        };
        Ok(match Kind::try_from(c.kind) {
            Ok(Kind::Continue) => Command::Continue,
            Ok(Kind::Pause) => Command::Pause,
            Ok(Kind::Checkpoint) => Command::Checkpoint(target()?),
            Ok(Kind::Stop) => Command::Stop(target()?),
            Err(_) => {
                return Err(anyhow!(
                    "unknown command kind {} from the coordinator",
                    c.kind
                ))
            }
        })
    }

    /// As numbers every backend broadcasts exactly: kind, global step, name length, name bytes.
    fn encode(&self) -> Vec<f64> {
        let (kind, target) = match self {
            Command::Continue => (0.0, None),
            Command::Pause => (1.0, None),
            Command::Checkpoint(t) => (2.0, Some(t)),
            Command::Stop(t) => (3.0, Some(t)),
        };
        let mut v = vec![0.0; 3 + MAX_DIR];
        v[0] = kind;
        if let Some(t) = target {
            v[1] = t.global_step as f64;
            v[2] = t.tmp_dir.len() as f64;
            for (i, b) in t.tmp_dir.bytes().enumerate() {
                v[3 + i] = b as f64;
            }
        }
        v
    }

    fn decode(v: &[f64]) -> Command {
        let target = || CheckpointTarget {
            global_step: v[1] as u64,
            tmp_dir: v[3..3 + v[2] as usize]
                .iter()
                .map(|&b| b as u8 as char)
                .collect(),
        };
        match v[0] as i32 {
            1 => Command::Pause,
            2 => Command::Checkpoint(target()),
            3 => Command::Stop(target()),
            _ => Command::Continue,
        }
    }

    /// Rank 0's command (`Some` there, `None` elsewhere), on every rank.
    pub fn broadcast(
        command: Option<Command>,
        comm: &dyn crate::collective::Collective,
        device: tch::Device,
    ) -> Result<Command> {
        let encoded = command
            .as_ref()
            .map_or_else(|| vec![0.0; 3 + MAX_DIR], Command::encode);
        let t = tch::Tensor::from_slice(&encoded).to_device(device);
        let shared = Vec::<f64>::try_from(comm.broadcast(&t, 0).to_device(tch::Device::Cpu))
            .map_err(|e| anyhow!("the broadcast command: {e}"))?;
        Ok(Command::decode(&shared))
    }
}

/// Where a launch resumes: the committed checkpoint the coordinator verified.
#[derive(Clone, Debug)]
pub struct ResumeFrom {
    pub dir: std::path::PathBuf,
    pub stage: String,
    pub step: u64,
}

/// What a rank is doing, for its heartbeats.
#[derive(Default)]
struct Progress {
    stage: Mutex<String>,
    step: AtomicU64,
}

pub struct Control {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    pub url: String,
    pub run_id: String,
    pub rank: u32,
    pub generation: u32,
    pub completed_stages: Vec<String>,
    pub resume: Option<ResumeFrom>,
    progress: Arc<Progress>,
    beating: Arc<AtomicBool>,
    secret: String,
}

fn rpc_error(what: &str, url: &str, e: tonic::Status) -> anyhow::Error {
    anyhow!("{what} (coordinator {url}): {}", e.message())
}

/// The coordinator refused this process as not of its current launch (no or a stale
/// secret, an earlier generation): the process must stop, not carry on beside the new one.
fn refused(e: &tonic::Status) -> bool {
    matches!(
        e.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

/// The current launch's secret: from the launcher, in the environment; else, for workers
/// started by hand beside `fastlightgen coordinator`, from `<run dir>/launch-secret`.
fn launch_secret(cfg: &Config) -> Result<String> {
    let env = flg_core::launch::LAUNCH_SECRET_ENV;
    let (secret, from) = match std::env::var(env).ok().filter(|s| !s.is_empty()) {
        Some(s) => (s, env.to_string()),
        None => {
            let path = cfg.run_dir().launch_secret();
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no launch secret: {env} is not set and {} cannot be read (the coordinator writes it when it starts; the ranks need the same run directory)",
                    path.display()
                )
            })?;
            (text.trim().to_string(), path.display().to_string())
        }
    };
    anyhow::ensure!(
        !secret.is_empty() && secret.chars().all(|c| c.is_ascii_graphic()),
        "{from}: the launch secret must be printable ASCII (it travels in a gRPC header)"
    );
    Ok(secret)
}

/// A request carrying the launch secret (printable ASCII, checked when it was read; a
/// secret that is not would be left out, and the coordinator would say the call has none).
fn signed<T>(secret: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = secret.parse() {
        r.metadata_mut()
            .insert(flg_core::launch::LAUNCH_SECRET_HEADER, v);
    }
    r
}

impl Control {
    /// Connects (retrying for a while: the coordinator may still be starting), registers this
    /// rank and starts its heartbeat thread.
    pub fn connect(url: &str, cfg: &Config, rank: u32, world: u32) -> Result<Control> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flg-control")
            .enable_all()
            .build()
            .context("starting the control-plane runtime")?;
        let endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| anyhow!("--coordinator {url:?} is not a URL: {e}"))?
            .connect_timeout(Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(60);
        let channel = loop {
            match rt.block_on(endpoint.connect()) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow!("cannot reach the coordinator at {url}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let secret = launch_secret(cfg)?;
        let settings = flg_core::settings::run_settings(cfg);
        let request = pb::RegisterRequest {
            run_id: String::new(),
            rank,
            world_size: world,
            hostname: flg_core::hostname(),
            pid: std::process::id(),
            config_hash: flg_core::settings::settings_hash(&settings),
        };
        let reply = rt
            .block_on(WorkerHubClient::new(channel.clone()).register(signed(&secret, request)))
            .map_err(|e| rpc_error(&format!("rank {rank} cannot register"), url, e))?
            .into_inner();
        let resume = (!reply.resume_from.is_empty()).then(|| ResumeFrom {
            dir: reply.resume_from.clone().into(),
            stage: reply.resume_stage.clone(),
            step: reply.resume_step,
        });
        let control = Control {
            rt,
            channel,
            url: url.to_string(),
            run_id: reply.run_id,
            rank,
            generation: reply.generation,
            completed_stages: reply.completed_stages,
            resume,
            progress: Arc::new(Progress::default()),
            beating: Arc::new(AtomicBool::new(true)),
            secret,
        };
        control.start_heartbeats(cfg.cluster.heartbeat_interval_s);
        Ok(control)
    }

    fn client(&self) -> WorkerHubClient<Channel> {
        WorkerHubClient::new(self.channel.clone())
    }

    /// The heartbeat thread has its own runtime and connection, so nothing the main thread
    /// does (a long step, a blocked collective) delays a beat; only a stopped or dead process
    /// goes silent.
    fn start_heartbeats(&self, interval_s: f64) {
        let (progress, beating) = (self.progress.clone(), self.beating.clone());
        let (run_id, rank, generation) = (self.run_id.clone(), self.rank, self.generation);
        let url = self.url.clone();
        let secret = self.secret.clone();
        std::thread::Builder::new()
            .name("flg-heartbeat".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    eprintln!("rank {rank}: cannot start the heartbeat runtime");
                    return;
                };
                let channel = match Channel::from_shared(url.clone()) {
                    Ok(e) => rt.block_on(async { e.connect_lazy() }),
                    Err(_) => return,
                };
                let mut client = WorkerHubClient::new(channel);
                let mut warned = false;
                while beating.load(Ordering::Relaxed) {
                    let beat = pb::HeartbeatRequest {
                        run_id: run_id.clone(),
                        rank,
                        generation,
                        stage: progress.stage.lock().map(|s| s.clone()).unwrap_or_default(),
                        step: progress.step.load(Ordering::Relaxed),
                    };
                    if let Err(e) = rt.block_on(client.heartbeat(signed(&secret, beat))) {
                        if refused(&e) {
                            // Another launch owns the run now (or this process was never
                            // part of it): end at once, before it touches a checkpoint.
                            eprintln!(
                                "rank {rank}: the coordinator refused this process ({}); exiting",
                                e.message()
                            );
                            std::process::exit(3);
                        }
                        if !warned {
                            eprintln!("rank {rank}: heartbeat to {url} failed: {}", e.message());
                            warned = true;
                        }
                    }
                    std::thread::sleep(Duration::from_secs_f64(interval_s));
                }
            })
            .expect("spawning the heartbeat thread");
    }

    /// What the heartbeats say this rank is doing.
    pub fn set_progress(&self, stage: &str, step: u64) {
        if let Ok(mut s) = self.progress.stage.lock() {
            if *s != stage {
                *s = stage.to_string();
            }
        }
        self.progress.step.store(step, Ordering::Relaxed);
    }

    /// The stage this rank is in (as its heartbeats say), empty before the first.
    pub fn stage(&self) -> String {
        self.progress
            .stage
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Rank 0: the command for the boundary after `step` steps of `stage`.
    pub fn next_command(&self, stage: &str, step: u64) -> Result<Command> {
        let req = pb::NextCommandRequest {
            run_id: self.run_id.clone(),
            rank: self.rank,
            generation: self.generation,
            stage: stage.into(),
            step,
        };
        let c = self
            .rt
            .block_on(self.client().next_command(signed(&self.secret, req)))
            .map_err(|e| rpc_error("fetching the next command", &self.url, e))?
            .into_inner();
        Command::from_proto(&c)
    }

    pub fn report_metrics(
        &self,
        stage: &str,
        step: u64,
        total_steps: u64,
        values: &[(&str, f64)],
    ) -> Result<()> {
        let req = pb::MetricsReport {
            run_id: self.run_id.clone(),
            rank: self.rank,
            generation: self.generation,
            stage: stage.into(),
            step,
            total_steps,
            values: values
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        };
        self.rt
            .block_on(self.client().report_metrics(signed(&self.secret, req)))
            .map_err(|e| rpc_error("reporting metrics", &self.url, e))?;
        Ok(())
    }

    /// Rank 0: `event` is started, done, stopped or failed.
    pub fn report_stage(
        &self,
        stage: &str,
        event: pb::StageEvent,
        seconds: f64,
        message: &str,
    ) -> Result<()> {
        let req = pb::StageReport {
            run_id: self.run_id.clone(),
            rank: self.rank,
            generation: self.generation,
            stage: stage.into(),
            event: event as i32,
            seconds,
            message: message.into(),
        };
        self.rt
            .block_on(self.client().report_stage(signed(&self.secret, req)))
            .map_err(|e| {
                rpc_error(
                    &format!("reporting stage {stage} {}", event.as_str_name()),
                    &self.url,
                    e,
                )
            })?;
        Ok(())
    }

    /// Reports this rank's files of a checkpoint (phase one of the commit).
    pub fn commit_shard(
        &self,
        stage: &str,
        step: u64,
        global_step: u64,
        tmp_dir: &str,
        files: Vec<pb::ShardFile>,
    ) -> Result<()> {
        let req = pb::ShardCommit {
            run_id: self.run_id.clone(),
            rank: self.rank,
            generation: self.generation,
            stage: stage.into(),
            step,
            files,
            global_step,
            tmp_dir: tmp_dir.into(),
        };
        self.rt
            .block_on(self.client().commit_shard(signed(&self.secret, req)))
            .map_err(|e| rpc_error("committing a checkpoint shard", &self.url, e))?;
        Ok(())
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.beating.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_survive_the_broadcast_encoding() {
        let target = CheckpointTarget {
            global_step: 123_456_789,
            tmp_dir: "tmp-123456789-g7".into(),
        };
        for c in [
            Command::Continue,
            Command::Pause,
            Command::Checkpoint(target.clone()),
            Command::Stop(target),
        ] {
            assert_eq!(Command::decode(&c.encode()), c);
        }
    }

    #[test]
    fn a_checkpoint_command_must_name_a_plain_directory() {
        let c = |dir: &str| pb::Command {
            kind: pb::command::Kind::Checkpoint as i32,
            reason: String::new(),
            global_step: 5,
            tmp_dir: dir.into(),
        };
        assert!(Command::from_proto(&c("tmp-5-g0")).is_ok());
        for bad in ["", "../x", ".hidden", &"x".repeat(65)] {
            let e = Command::from_proto(&c(bad)).unwrap_err().to_string();
            assert!(e.contains("checkpoint directory"), "{e}");
        }
    }
}
