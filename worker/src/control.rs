//! A rank's link to the coordinator (the WorkerHub service): registration, heartbeats from a
//! thread of their own (so a rank busy in a long step or stopped by a signal is told apart by
//! the coordinator), metrics, stage reports, checkpoint commits, and rank 0's command fetch.
//!
//! The calls are blocking: a small tokio runtime inside serves them, from any thread.

use anyhow::{anyhow, Context, Result};
use flg_coordinator::config::Config;
use flg_proto as pb;
use pb::worker_hub_client::WorkerHubClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// What to do at a step boundary (rank 0 fetches it; every rank gets it by broadcast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Continue,
    Pause,
    Checkpoint,
    Stop,
}

impl Command {
    pub fn code(self) -> i32 {
        match self {
            Command::Continue => 0,
            Command::Pause => 1,
            Command::Checkpoint => 2,
            Command::Stop => 3,
        }
    }

    pub fn from_code(c: i32) -> Command {
        match c {
            1 => Command::Pause,
            2 => Command::Checkpoint,
            3 => Command::Stop,
            _ => Command::Continue,
        }
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
}

fn rpc_error(what: &str, url: &str, e: tonic::Status) -> anyhow::Error {
    anyhow!("{what} (coordinator {url}): {}", e.message())
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
        let settings = flg_coordinator::run::settings::run_settings(cfg);
        let request = pb::RegisterRequest {
            run_id: String::new(),
            rank,
            world_size: world,
            hostname: flg_coordinator::run::state::hostname(),
            pid: std::process::id(),
            config_hash: flg_coordinator::run::settings::settings_hash(&settings),
        };
        let reply = rt
            .block_on(WorkerHubClient::new(channel.clone()).register(request))
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
                    if let Err(e) = rt.block_on(client.heartbeat(beat)) {
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
            stage: stage.into(),
            step,
        };
        let c = self
            .rt
            .block_on(self.client().next_command(req))
            .map_err(|e| rpc_error("fetching the next command", &self.url, e))?
            .into_inner();
        Ok(Command::from_code(c.kind))
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
            .block_on(self.client().report_metrics(req))
            .map_err(|e| rpc_error("reporting metrics", &self.url, e))?;
        Ok(())
    }

    /// Rank 0: `event` is started, done, stopped or failed.
    pub fn report_stage(
        &self,
        stage: &str,
        event: &str,
        seconds: f64,
        message: &str,
    ) -> Result<()> {
        let req = pb::StageReport {
            run_id: self.run_id.clone(),
            rank: self.rank,
            stage: stage.into(),
            event: event.into(),
            seconds,
            message: message.into(),
        };
        self.rt
            .block_on(self.client().report_stage(req))
            .map_err(|e| rpc_error(&format!("reporting stage {stage} {event}"), &self.url, e))?;
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
            stage: stage.into(),
            step,
            files,
            global_step,
            tmp_dir: tmp_dir.into(),
        };
        self.rt
            .block_on(self.client().commit_shard(req))
            .map_err(|e| rpc_error("committing a checkpoint shard", &self.url, e))?;
        Ok(())
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.beating.store(false, Ordering::Relaxed);
    }
}
