//! The driver's HTTP server: axum's router on hyper connections, with the
//! bounds a shared service needs so that slow or many clients cannot exhaust
//! it: at most `max_connections` open at once (more are closed on accept), a
//! time limit for a request's headers (which also closes idle keep-alive
//! connections), and a time limit for a whole request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};

use super::error::ApiError;

#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections open at once; further ones are closed at accept.
    pub max_connections: usize,
    /// The longest a client may take to send a request's headers; also how
    /// long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// The longest one request may take, body and answer included.
    pub request_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: ignis_core::protocol::DRIVER_IDLE_CONNECTION,
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// Serve `router` on `listen` until `shutdown` completes; then stop accepting
/// and let open connections finish their requests.
pub async fn serve(
    router: Router,
    listen: SocketAddr,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "driver listening");
    let request_timeout = limits.request_timeout;
    let router = router.layer(axum::middleware::from_fn(move |req: Request, next: Next| async move {
        match tokio::time::timeout(request_timeout, next.run(req)).await {
            Ok(response) => response,
            Err(_) => timed_out(request_timeout),
        }
    }));
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection refused: too many open connections");
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let header_timeout = limits.header_read_timeout;
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = async move { let _ = stopped.wait_for(|s| *s).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    stop.send_replace(true);
    // Wait for open connections to finish (each holds a permit), a bounded time.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(30), connections.acquire_many(all)).await;
    Ok(())
}

fn timed_out(limit: Duration) -> Response {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!("the request took longer than {} s", limit.as_secs()),
    )
    .into_response()
}
