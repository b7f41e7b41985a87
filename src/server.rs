//! HTTP assembly: the app factory, binding, serving and draining.

mod admin;
mod auth;
mod body;
mod extract;
mod feedback;
mod infer;
mod v2;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::deployment::{Gateway, StartError};
use crate::protocol::{ApiError, ErrorKind};
use crate::telemetry;

/// State shared by every handler.
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub prometheus: PrometheusHandle,
}

/// The router, without a socket (handler tests can drive it directly).
pub fn app(state: Arc<AppState>) -> Router {
    use axum::middleware::from_fn_with_state;
    // Feedback changes durable state: never for another origin's page.
    let feedback = Router::new()
        .route("/v2/models/{name}/feedback", post(feedback::feedback))
        .route_layer(axum::middleware::from_fn(auth::not_cross_origin));
    let inference = Router::new()
        .route("/v2/models/{name}/infer", post(infer::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer::infer_v),
        )
        .merge(feedback);
    // The token check wraps the routes only when a token is configured: the
    // layer costs every request a boxed future even when it lets it through.
    let inference = if state.gateway.config().server.inference_token.is_some() {
        inference.route_layer(from_fn_with_state(Arc::clone(&state), auth::inference))
    } else {
        inference
    };
    let admin = Router::new()
        .route("/admin/deployments", get(admin::list))
        .route("/admin/deployments/{name}", get(admin::detail))
        .route(
            "/admin/deployments/{name}/challengers",
            post(admin::add_challenger),
        )
        .route(
            "/admin/deployments/{name}/challengers/{model}/{version}",
            axum::routing::delete(admin::remove_challenger),
        )
        .route("/admin/deployments/{name}/promote", post(admin::promote))
        .route("/admin/deployments/{name}/rollback", post(admin::rollback))
        .route("/admin/deployments/{name}/history", get(admin::history))
        .route("/admin/deployments/{name}/drift", get(admin::drift))
        // Triton's repository load/unload change what is loaded: admin access.
        .route(
            "/v2/repository/models/{name}/load",
            post(v2::repository_load),
        )
        .route(
            "/v2/repository/models/{name}/unload",
            post(v2::repository_unload),
        )
        .route_layer(from_fn_with_state(Arc::clone(&state), auth::admin));
    Router::new()
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/stats", get(v2::all_stats))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/config", get(v2::model_config))
        .route("/v2/models/{name}/stats", get(v2::model_stats))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::model_metadata_v),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::model_ready_v),
        )
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(v2::model_config_v),
        )
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(v2::model_stats_v),
        )
        .route("/v2/repository/index", post(v2::repository_index))
        .route("/metrics", get(v2::metrics))
        .merge(inference)
        .merge(admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{method} is not served on {}", uri.path()),
    )
}

/// A gateway bound to its port, loading its models in the background.
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl Server {
    /// Validates the repository against the config, then binds. Models load
    /// once [`Server::run`] starts; liveness answers meanwhile, readiness waits.
    pub async fn bind(config: Config) -> Result<Server, BindError> {
        let addr = config.server.http_addr;
        crate::runtime::onnx::init(&config.runtime.onnxruntime_library())?;
        let gateway = Arc::new(Gateway::new(config)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError::Bind { addr, source })?;
        let state = Arc::new(AppState {
            gateway,
            prometheus: telemetry::install(),
        });
        Ok(Server { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.state.gateway
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish
    /// for at most the drain timeout.
    ///
    /// Connections are served by hyper directly (not `axum::serve`, which
    /// sets no timeouts): a client that does not send a request's headers
    /// within `server.header_read_timeout_secs` of the connection being ready
    /// for one — a slow client, a connection that sends nothing, an idle
    /// keep-alive connection — is closed, and at most
    /// `server.max_connections` connections are open at once (further ones
    /// wait in the listen backlog), so idle sockets cannot hold the process
    /// at its open-file limit.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let gateway = Arc::clone(&self.state.gateway);
        let gateway_for_flush = Arc::clone(&gateway);
        let server = gateway.config().server.clone();
        let policy = tokio::spawn(Arc::clone(&gateway).run_policy());
        let notifier = tokio::spawn(Arc::clone(&gateway).run_notifier());
        let stats_saver = tokio::spawn(Arc::clone(&gateway).run_stats_saver());
        let loading = tokio::spawn(async move { gateway.load().await });
        let router = app(self.state);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(server.header_read_timeout_secs))
            .keep_alive(true);
        let connections = Arc::new(tokio::sync::Semaphore::new(server.max_connections));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        // The connections' tasks: those still running when the drain times
        // out are stopped before the store closes.
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = Arc::clone(&connections).acquire_owned() => {
                    p.expect("the connection semaphore is never closed")
                }
                () = &mut shutdown => break,
            };
            let (tcp, remote) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let service = hyper_util::service::TowerToHyperService::new(
                tower::ServiceBuilder::new()
                    .layer(axum::Extension(axum::extract::ConnectInfo(remote)))
                    .service(router.clone()),
            );
            let conn =
                graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service));
            tasks.spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(client = %remote, error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
        tracing::info!("shutting down: draining in-flight requests");
        // No new connections; idle ones close now, busy ones after their
        // current request.
        drop(self.listener);
        let drain_timeout = Duration::from_secs(server.drain_timeout_secs);
        if tokio::time::timeout(drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_secs = drain_timeout.as_secs(),
                "drain timeout reached; closing remaining connections"
            );
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        loading.abort();
        policy.abort();
        notifier.abort();
        stats_saver.abort();
        // Every member's traffic counters are saved before exit, so a clean
        // restart resumes them exactly.
        if let Err(e) = gateway_for_flush.save_member_stats().await {
            tracing::warn!(error = %e, "could not save the members' traffic counters");
        }
        // Predictions still queued for the log are written before exit, and
        // the data directory's lock is released.
        if let Err(e) = gateway_for_flush.store().close().await {
            tracing::warn!(error = %e, "could not flush the prediction log");
        }
        Ok(())
    }
}

/// An `accept` that failed. A failure of one connection (reset before it
/// was accepted) is nothing; any other, such as the open-file limit, is
/// logged and accepting pauses for a second, as hyper and axum do.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
