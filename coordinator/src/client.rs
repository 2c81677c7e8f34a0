//! The control client: `fastlightgen status|watch|pause|resume|checkpoint|stop`.

use crate::progress::Bars;
use flg_core::events::Record;
use flg_core::RunDir;
use flg_proto as pb;
use pb::control_client::ControlClient;
use std::path::Path;
use std::process::ExitCode;
use tonic::transport::Channel;

/// Which coordinator to talk to, and the token for mutating calls.
pub struct Target {
    pub url: String,
    pub token: Option<String>,
}

/// `--coordinator` takes a URL, or a run directory whose `coordinator.json` names it (then
/// its `control-token` is used when no token is given).
pub fn resolve(coordinator: &str, token: Option<String>) -> Result<Target, String> {
    let token = token.or_else(|| {
        std::env::var("FLG_CONTROL_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    if Path::new(coordinator).is_dir() {
        let dir = RunDir::new(coordinator);
        let file = dir.coordinator_info();
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!(
                "{}: {e} (is the run's coordinator running?)",
                file.display()
            )
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let url = v
            .get("url")
            .and_then(|u| u.as_str())
            .ok_or_else(|| format!("{}: no \"url\"", file.display()))?
            .to_string();
        let token = token.or_else(|| {
            std::fs::read_to_string(dir.control_token())
                .ok()
                .map(|t| t.trim().to_string())
        });
        return Ok(Target { url, token });
    }
    if !coordinator.starts_with("http://") && !coordinator.starts_with("https://") {
        return Err(format!(
            "--coordinator {coordinator:?}: expected a URL such as http://127.0.0.1:50051, or a run directory"
        ));
    }
    Ok(Target {
        url: coordinator.to_string(),
        token,
    })
}

async fn connect(url: &str) -> Result<ControlClient<Channel>, String> {
    let endpoint = Channel::from_shared(url.to_string()).map_err(|e| format!("{url}: {e}"))?;
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot reach the coordinator at {url}: {e}"))?;
    Ok(ControlClient::new(channel))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn fail(msg: String) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

pub fn status(t: &Target, json: bool) -> ExitCode {
    let result = runtime().block_on(async {
        let mut c = connect(&t.url).await?;
        c.status(pb::StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.message().to_string())
    });
    let s = match result {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if json {
        println!("{}", crate::run::status_json(&s));
        return ExitCode::SUCCESS;
    }
    println!("run {} ({}): {}", s.run_id, s.experiment, state_name(&s));
    println!(
        "  stage {} step {}/{}, {:.1} samples/s, eta {:.0} s",
        s.stage, s.step, s.total_steps, s.samples_per_second, s.eta_seconds
    );
    let mut losses: Vec<_> = s.losses.iter().collect();
    losses.sort_by(|a, b| a.0.cmp(b.0));
    if !losses.is_empty() {
        let l: Vec<String> = losses.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        println!("  {}", l.join(", "));
    }
    println!(
        "  ranks alive {}/{}, restarts {}, last checkpoint {}",
        s.ranks_alive,
        s.world_size,
        s.restarts,
        last_checkpoint(&s)
    );
    ExitCode::SUCCESS
}

/// The run state's name (`running`, `finished`, ...).
pub fn state_name(s: &pb::RunStatus) -> String {
    match pb::RunState::try_from(s.state) {
        Ok(st) => st
            .as_str_name()
            .trim_start_matches("RUN_STATE_")
            .to_ascii_lowercase(),
        Err(_) => format!("unknown state {}", s.state),
    }
}

/// `step-N (stage)`, or `none`.
pub fn last_checkpoint(s: &pb::RunStatus) -> String {
    if s.last_committed_stage.is_empty() {
        "none".to_string()
    } else {
        format!(
            "step-{} ({})",
            s.last_committed_step, s.last_committed_stage
        )
    }
}

/// Follows the event stream with progress bars until the run ends.
pub fn watch(t: &Target, from_start: bool, log_every: std::time::Duration) -> ExitCode {
    let result: Result<(), String> = runtime().block_on(async {
        let mut c = connect(&t.url).await?;
        let mut stream = c
            .watch(pb::WatchRequest { from_start })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        let mut bars = Bars::new(log_every);
        loop {
            // Woken now and then without events, for the plain lines of a quiet stage.
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(500), stream.message());
            let e = match next.await {
                Err(_) => {
                    bars.tick(std::time::Instant::now());
                    continue;
                }
                Ok(m) => match m.map_err(|e| e.message().to_string())? {
                    Some(e) => e,
                    None => break,
                },
            };
            // A kind this version does not know (a newer coordinator) is skipped.
            if let Ok(r) = serde_json::from_str::<Record>(&e.json) {
                bars.handle(&r);
            }
            if matches!(e.kind.as_str(), "finished" | "stopped" | "failed") && !from_start {
                break;
            }
        }
        bars.finish();
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// pause, resume, checkpoint or stop.
pub fn control(t: &Target, action: &str, reason: &str) -> ExitCode {
    let result = runtime().block_on(async {
        let mut c = connect(&t.url).await?;
        let mut req = tonic::Request::new(pb::ControlRequest {
            reason: reason.to_string(),
        });
        if let Some(token) = &t.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                "the control token has characters a header cannot carry".to_string()
            })?;
            req.metadata_mut()
                .insert(crate::run::service::AUTH_HEADER, value);
        }
        let reply = match action {
            "pause" => c.pause(req).await,
            "resume" => c.resume(req).await,
            "checkpoint" => c.checkpoint(req).await,
            "stop" => c.stop(req).await,
            other => return Err(format!("unknown control action {other:?}")),
        };
        reply
            .map(|r| r.into_inner())
            .map_err(|e| format!("{action} refused ({:?}): {}", e.code(), e.message()))
    });
    match result {
        Ok(r) if r.accepted => {
            println!("{action}: {}", r.message);
            ExitCode::SUCCESS
        }
        Ok(r) => fail(format!("{action} not accepted: {}", r.message)),
        Err(e) => fail(e),
    }
}
