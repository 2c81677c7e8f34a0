//! The coordinator's read-only HTTP face, on `cluster.http_addr`: `GET /status` (the gRPC
//! Status as JSON, for probes and scripts) and `GET /` (a page people open in a browser:
//! stages, progress, losses, eval scores, checkpoints, ranks and their heartbeats; it
//! reloads itself every few seconds). Nothing here changes the run, and neither the control
//! token nor the launch secret is ever shown.

use crate::run::{PageView, RunHub};
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use flg_core::formats::eval::RunEval;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// How often the page reloads itself, in seconds.
const REFRESH_S: u32 = 3;

/// Serves the status page until `shutdown`; returns the bound address.
pub async fn serve(
    hub: Arc<RunHub>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .with_state(hub);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("the coordinator's status page stopped: {e}");
        }
    });
    Ok((bound, handle))
}

async fn status(State(hub): State<Arc<RunHub>>) -> impl IntoResponse {
    let s = hub.status(Instant::now());
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(crate::run::status_json(&s)),
    )
}

async fn page(State(hub): State<Arc<RunHub>>) -> impl IntoResponse {
    let view = hub.page(Instant::now());
    // eval.json is small and written once, by the eval stage.
    let eval = RunEval::read(&hub.run_dir.eval()).ok();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(render(&view, eval.as_ref())),
    )
}

/// `text` safe inside HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The page for `view` (and the eval scores, once there are any).
pub fn render(view: &PageView, eval: Option<&RunEval>) -> String {
    let s = &view.status;
    let text = |k: &str| esc(s[k].as_str().unwrap_or(""));
    let num = |k: &str| s[k].as_f64().unwrap_or(0.0);
    let (step, total) = (num("step"), num("total_steps"));
    let pct = if total > 0.0 {
        100.0 * step / total
    } else {
        0.0
    };
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>{exp} · {state} · fastlightgen</title>
<style>
body{{font:14px system-ui,sans-serif;margin:24px;color:#1d2330;max-width:980px}}
h1{{font-size:20px;margin:0 0 4px}} h2{{font-size:15px;margin:22px 0 6px}}
.muted{{color:#6b7385}} table{{border-collapse:collapse}} td,th{{padding:3px 10px;border-bottom:1px solid #e3e6ec;text-align:left}}
th{{font-weight:600;color:#454d5f}} td.n{{text-align:right;font-variant-numeric:tabular-nums}}
.bar{{background:#e8ebf1;border-radius:4px;height:14px;width:420px;display:inline-block;vertical-align:middle}}
.fill{{background:#3a6fd8;height:14px;border-radius:4px}}
.state{{display:inline-block;padding:1px 8px;border-radius:9px;background:#e8ebf1}}
.done{{color:#1f7a3a}} .running{{color:#3a6fd8;font-weight:600}} .waiting{{color:#8a91a3}} .late{{color:#b3261e;font-weight:600}}
</style></head><body>
<h1>{exp} <span class="state">{state}</span></h1>
<div class="muted">run {run_id} · reloads every {REFRESH_S} s · JSON at <a href="/status">/status</a></div>
"#,
        exp = text("experiment"),
        state = text("state"),
        run_id = text("run_id"),
    );
    h.push_str("<h2>Stages</h2><table><tr>");
    for (stage, state) in &view.stages {
        let _ = write!(h, r#"<td class="{state}">{} · {state}</td>"#, esc(stage));
    }
    h.push_str("</tr></table>");
    let stage = text("stage");
    if total > 0.0 {
        let eta = num("eta_seconds");
        let _ = write!(
            h,
            r#"<h2>Progress</h2><div><b>{stage}</b> step {step:.0} of {total:.0} ({pct:.0}%)
<div class="bar"><div class="fill" style="width:{pct:.1}%"></div></div></div>
<div class="muted">{rate:.1} samples/s · eta {eta}</div>"#,
            rate = num("samples_per_second"),
            eta = if eta > 0.0 {
                flg_core::logging::human_seconds(eta)
            } else {
                "–".into()
            },
        );
    } else if !stage.is_empty() {
        let _ = write!(h, "<h2>Progress</h2><div><b>{stage}</b></div>");
    }
    if let Some(losses) = s["losses"].as_object().filter(|l| !l.is_empty()) {
        h.push_str("<h2>Latest losses</h2><table>");
        for (k, v) in losses {
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td class="n">{:.5}</td></tr>"#,
                esc(k),
                v.as_f64().unwrap_or(f64::NAN)
            );
        }
        h.push_str("</table>");
    }
    if let Some(e) = eval {
        h.push_str(
            "<h2>Eval scores</h2><table><tr><th>row</th><th>steps</th><th>average</th>\
             <th>dynamic</th><th>Fréchet</th><th>seconds</th></tr>",
        );
        for r in &e.rows {
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{:.3}</td><td class="n">{:.3}</td><td class="n">{:.2}</td><td class="n">{:.1}</td></tr>"#,
                esc(&r.name),
                r.steps,
                r.eval.average,
                r.eval.scores.dynamic_degree,
                r.eval.frechet_distance,
                r.seconds
            );
        }
        h.push_str("</table>");
        if let Some(x) = e.speedup_measured {
            let _ = write!(h, r#"<div class="muted">measured speedup {x:.1}x</div>"#);
        }
    }
    let _ = write!(
        h,
        "<h2>Ranks</h2><div class=\"muted\">{alive} of {world} alive · launch {gen} · {restarts} restart(s)</div>",
        alive = num("ranks_alive"),
        world = num("world_size"),
        gen = view.generation.map_or("–".to_string(), |g| g.to_string()),
        restarts = num("restarts"),
    );
    if !view.ranks.is_empty() {
        h.push_str("<table><tr><th>rank</th><th>host</th><th>pid</th><th>last heartbeat</th></tr>");
        for r in &view.ranks {
            let late = r.heartbeat_age_s > view.heartbeat_timeout_s / 2.0;
            let _ = write!(
                h,
                r#"<tr><td class="n">{}</td><td>{}</td><td class="n">{}</td><td class="n{}">{:.1} s ago</td></tr>"#,
                r.rank,
                esc(&r.host),
                r.pid,
                if late { " late" } else { "" },
                r.heartbeat_age_s
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Checkpoints</h2>");
    if view.checkpoints.is_empty() {
        h.push_str(r#"<div class="muted">none committed yet</div>"#);
    } else {
        h.push_str("<table><tr><th>global step</th><th>directory</th></tr>");
        for (g, dir) in view.checkpoints.iter().rev() {
            let _ = write!(h, r#"<tr><td class="n">{g}</td><td>{}</td></tr>"#, esc(dir));
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_it_shows() {
        let view = PageView {
            status: serde_json::json!({
                "experiment": "<script>x</script>", "state": "running", "run_id": "r1",
                "stage": "pruning", "step": 30, "total_steps": 120,
                "samples_per_second": 12.5, "eta_seconds": 90.0,
                "losses": {"flow_full": 0.0123}, "ranks_alive": 2, "world_size": 2, "restarts": 0,
            }),
            stages: vec![("pruning".into(), "running".into())],
            ranks: vec![crate::run::RankView {
                rank: 0,
                host: "node<1>".into(),
                pid: 42,
                heartbeat_age_s: 0.4,
            }],
            heartbeat_timeout_s: 30.0,
            checkpoints: vec![(20, "step-20".into())],
            generation: Some(1),
        };
        let h = render(&view, None);
        assert!(
            !h.contains("<script>") && h.contains("&lt;script&gt;"),
            "{h}"
        );
        assert!(h.contains("node&lt;1&gt;"));
        assert!(
            h.contains("step 30 of 120 (25%)") && h.contains("eta 1 min 30 s"),
            "{h}"
        );
        assert!(h.contains("step-20") && h.contains("flow_full"));
        assert!(h.contains(r#"http-equiv="refresh""#));
    }
}
