//! The gRPC services over a [`RunHub`]: `Control` for people and scripts, `WorkerHub` for the
//! ranks. Thin: each call checks its caller and hands over to the hub.

use super::hub::constant_time_eq;
use super::RunHub;
use flg_core::events::Record;
use flg_proto as pb;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Services {
    pub hub: Arc<RunHub>,
}

/// The metadata key of the bearer token.
pub const AUTH_HEADER: &str = "authorization";

impl Services {
    /// Mutating control calls need `authorization: Bearer <token>`.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let given = req
            .metadata()
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), self.hub.token().as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "wrong control token (see the coordinator's start-up message or <run dir>/control-token)",
            )),
            None => Err(Status::unauthenticated(
                "this call changes the run and needs its control token: pass --token or set FLG_CONTROL_TOKEN \
                 (printed when the coordinator starts; also in <run dir>/control-token)",
            )),
        }
    }
}

/// The metadata key of the launch secret on WorkerHub calls.
pub use flg_core::launch::LAUNCH_SECRET_HEADER;

impl Services {
    /// Every WorkerHub call must come from the current launch: it carries that launch's
    /// secret. Checked before anything else, so a refused call changes nothing.
    fn check_launch<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let given = req
            .metadata()
            .get(LAUNCH_SECRET_HEADER)
            .and_then(|v| v.to_str().ok());
        match given {
            Some(g) if self.hub.launch_secret_matches(g) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "wrong launch secret: this call is not from the coordinator's current launch (a stale or foreign process should exit)",
            )),
            None => Err(Status::unauthenticated(format!(
                "WorkerHub calls need the launch secret ({LAUNCH_SECRET_HEADER} header): ranks get it from the launcher in {}, or from <run dir>/launch-secret when the workers are started by hand",
                flg_core::launch::LAUNCH_SECRET_ENV
            ))),
        }
    }
}

/// The proto form of an event as written to `events.jsonl`.
pub fn to_event(r: &Record) -> pb::Event {
    let (step, total_steps) = match &r.event {
        flg_core::events::Event::Step {
            step, total_steps, ..
        } => (*step, *total_steps),
        flg_core::events::Event::StageStarted { total_steps, .. } => (0, *total_steps),
        flg_core::events::Event::CheckpointCommitted { step, .. }
        | flg_core::events::Event::Paused { step, .. }
        | flg_core::events::Event::Resumed { step, .. }
        | flg_core::events::Event::Stopped { step, .. } => (*step, 0),
        _ => (0, 0),
    };
    pb::Event {
        unix_time: r.unix_time,
        kind: r.event.kind().into(),
        stage: r
            .event
            .stage()
            .map(|s| s.name().to_string())
            .unwrap_or_default(),
        step,
        total_steps,
        json: r.to_json(),
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for Services {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::RunStatus>, Status> {
        Ok(Response::new(self.hub.status(Instant::now())))
    }

    type WatchStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Subscribe before replaying so nothing falls between the two.
        let mut live = self.hub.subscribe();
        let replay = if req.get_ref().from_start {
            self.hub.history()
        } else {
            Vec::new()
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for e in &replay {
                if tx.send(Ok(to_event(e))).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(e) => {
                        if tx.send(Ok(to_event(&e))).await.is_err() {
                            return;
                        }
                    }
                    // A slow watcher misses some step events; it keeps following.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn pause(
        &self,
        req: Request<pb::ControlRequest>,
    ) -> Result<Response<pb::ControlReply>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(self.hub.pause(&req.get_ref().reason)))
    }

    async fn resume(
        &self,
        req: Request<pb::ControlRequest>,
    ) -> Result<Response<pb::ControlReply>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(self.hub.resume(&req.get_ref().reason)))
    }

    async fn checkpoint(
        &self,
        req: Request<pb::ControlRequest>,
    ) -> Result<Response<pb::ControlReply>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(self.hub.checkpoint(&req.get_ref().reason)))
    }

    async fn stop(
        &self,
        req: Request<pb::ControlRequest>,
    ) -> Result<Response<pb::ControlReply>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(self.hub.stop(&req.get_ref().reason)))
    }
}

#[tonic::async_trait]
impl pb::worker_hub_server::WorkerHub for Services {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        self.check_launch(&req)?;
        self.hub
            .register(req.get_ref(), Instant::now())
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.check_launch(&req)?;
        self.hub.heartbeat(req.get_ref(), Instant::now())?;
        Ok(Response::new(pb::HeartbeatReply {}))
    }

    async fn report_metrics(
        &self,
        req: Request<pb::MetricsReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.check_launch(&req)?;
        self.hub.report_metrics(req.get_ref(), Instant::now())?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn next_command(
        &self,
        req: Request<pb::NextCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        self.check_launch(&req)?;
        self.hub.next_command(req.get_ref()).map(Response::new)
    }

    async fn commit_shard(
        &self,
        req: Request<pb::ShardCommit>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.check_launch(&req)?;
        // Committing hashes nothing but renames and fsyncs: keep it off the async workers.
        let hub = self.hub.clone();
        let c = req.into_inner();
        tokio::task::spawn_blocking(move || hub.commit_shard(&c))
            .await
            .map_err(|e| Status::internal(format!("commit task failed: {e}")))??;
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_stage(
        &self,
        req: Request<pb::StageReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.check_launch(&req)?;
        self.hub.report_stage(req.get_ref())?;
        Ok(Response::new(pb::Ack {}))
    }
}

/// Binds `addr` (port 0: any free port) and serves both services until `shutdown` resolves.
/// Returns the bound address once listening.
pub async fn serve(
    hub: Arc<RunHub>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let services = Services { hub: hub.clone() };
    // The monitor: asks the hub, with the time, whether the launch is lost.
    let period = std::time::Duration::from_secs_f64(
        (hub.cfg.cluster.heartbeat_interval_s / 2.0).clamp(0.05, 1.0),
    );
    let monitor_hub = hub.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let now = Instant::now();
            monitor_hub.tick(now, period);
            monitor_hub.check_liveness(now);
        }
    });
    // The standard gRPC health service, for load balancers and probes (grpc_health_probe,
    // Kubernetes): the server ("") and both services report SERVING while it runs.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::control_server::ControlServer<Services>>()
        .await;
    health
        .set_serving::<pb::worker_hub_server::WorkerHubServer<Services>>()
        .await;
    let handle = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let result = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(pb::control_server::ControlServer::new(services.clone()))
            .add_service(pb::worker_hub_server::WorkerHubServer::new(services))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = result {
            tracing::error!("the coordinator's gRPC server stopped: {e}");
        }
    });
    Ok((bound, handle))
}
