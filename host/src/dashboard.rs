//! `modalis demo --dashboard`: serves the monitoring dashboard (`examples/dashboard/`) on
//! 127.0.0.1.
//!
//! The dashboard is static files and talks to the broker itself, over MQTT-over-WebSockets:
//! this server only hands out the files (compiled into the binary, so it works from any
//! directory), the published JSON Schemas of the MQTT payloads (the page takes its field
//! names and units from them), and `config.json`, which tells the page where the broker's
//! WebSockets listener is and which controller to watch. It never sees a patient's data.

use std::net::{Ipv4Addr, SocketAddr};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What the page needs to connect.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardConfig {
    /// The broker's MQTT-over-WebSockets URL, e.g. `ws://127.0.0.1:9001/mqtt`.
    pub ws_url: String,
    /// The controller id (the `<controller>` topic level).
    pub controller: String,
    /// Whether e-stop is offered. Whether it is allowed is the broker's ACL's decision.
    pub estop: bool,
}

/// A running dashboard server; stops when its cancellation token fires.
#[derive(Debug)]
pub struct DashboardServer {
    addr: SocketAddr,
}

impl DashboardServer {
    /// `http://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Why the dashboard server did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the dashboard on 127.0.0.1:{port}: {reason}")]
pub struct DashboardError {
    port: u16,
    reason: String,
}

macro_rules! files {
    ($($path:literal => $file:literal, $mime:literal;)*) => {
        &[$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", $file)) as &[u8], $mime),)*]
    };
}

/// Every file the server hands out: (URL path, bytes, content type).
const FILES: &[(&str, &[u8], &str)] = files! {
    "/" => "examples/dashboard/index.html", "text/html; charset=utf-8";
    "/index.html" => "examples/dashboard/index.html", "text/html; charset=utf-8";
    "/app.js" => "examples/dashboard/app.js", "text/javascript; charset=utf-8";
    "/style.css" => "examples/dashboard/style.css", "text/css; charset=utf-8";
    "/vendor/mqtt.min.js" => "examples/dashboard/vendor/mqtt.min.js", "text/javascript; charset=utf-8";
    "/vendor/uPlot.iife.min.js" => "examples/dashboard/vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8";
    "/vendor/uPlot.min.css" => "examples/dashboard/vendor/uPlot.min.css", "text/css; charset=utf-8";
    "/schemas/mqtt/alarm.schema.json" => "schemas/mqtt/alarm.schema.json", "application/json";
    "/schemas/mqtt/device-ack.schema.json" => "schemas/mqtt/device-ack.schema.json", "application/json";
    "/schemas/mqtt/device-command.schema.json" => "schemas/mqtt/device-command.schema.json", "application/json";
    "/schemas/mqtt/device-telemetry.schema.json" => "schemas/mqtt/device-telemetry.schema.json", "application/json";
    "/schemas/mqtt/estop.schema.json" => "schemas/mqtt/estop.schema.json", "application/json";
    "/schemas/mqtt/session-dose-report.schema.json" => "schemas/mqtt/session-dose-report.schema.json", "application/json";
    "/schemas/mqtt/session-status.schema.json" => "schemas/mqtt/session-status.schema.json", "application/json";
    "/schemas/mqtt/state.schema.json" => "schemas/mqtt/state.schema.json", "application/json";
};

/// Serves the dashboard on 127.0.0.1:`port` (0: a free port) until `cancel` fires.
///
/// The server runs on its own thread with its own single-threaded tokio runtime, so a busy
/// controller (compiling plugins, a plugin call) never delays a page, and a page never delays
/// the controller. It is axum (already in the build through rumqttd): a browser opens several
/// keep-alive connections at once, and tiny_http's thread pool was seen to leave one of them
/// unserved until another closed (the page hung on app.js for 20 s and more).
pub fn serve(
    port: u16,
    config: DashboardConfig,
    cancel: CancellationToken,
) -> Result<DashboardServer, DashboardError> {
    let err = |reason: String| DashboardError { port, reason };
    // Bound here, synchronously, so a taken port is the caller's error to handle.
    let listener =
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| err(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| err(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| err(e.to_string()))?;
    let config_json: &'static [u8] = serde_json::to_vec_pretty(&config)
        .map_err(|e| err(e.to_string()))?
        .leak();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| err(e.to_string()))?;
    std::thread::Builder::new()
        .name("dashboard-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "dashboard server did not start");
                        return;
                    }
                };
                let app = axum::Router::new().fallback(
                    move |method: axum::http::Method, uri: axum::http::Uri| async move {
                        respond(&method, uri.path(), config_json)
                    },
                );
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "dashboard server stopped");
                }
            });
        })
        .map_err(|e| err(e.to_string()))?;
    tracing::info!(%addr, "dashboard served on 127.0.0.1");
    Ok(DashboardServer { addr })
}

fn respond(
    method: &axum::http::Method,
    path: &str,
    config_json: &'static [u8],
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse as _;
    let (status, body, mime): (StatusCode, &'static [u8], &str) =
        if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                b"only GET and HEAD\n",
                "text/plain; charset=utf-8",
            )
        } else if path == "/config.json" {
            (StatusCode::OK, config_json, "application/json")
        } else if let Some((_, bytes, mime)) = FILES.iter().find(|(p, _, _)| *p == path) {
            (StatusCode::OK, bytes, mime)
        } else {
            (
                StatusCode::NOT_FOUND,
                b"not found\n",
                "text/plain; charset=utf-8",
            )
        };
    (
        status,
        [
            (header::CONTENT_TYPE, mime),
            // Nothing here is meant to be cached across runs: config.json changes every run.
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
