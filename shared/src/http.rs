//! The HTTP/1.1 serving both processes share: the api's front door and the worker's status
//! listener accept connections, answer `{"code": N, "message": "..."}`, and stop the same way.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::Service};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// An HTTP/1.1 connection builder with a deadline for the request head.
pub fn http1_builder(header_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    // The head deadline needs a timer, or hyper panics when it arms it.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
}

/// Serves every connection `listener` accepts with the service `make_service` builds for its
/// peer, at most `max_connections` at once, until `shutdown` resolves; then stops accepting
/// and gives the requests in flight up to `drain` to finish. Returns whether they all did.
///
/// Past `max_connections` a new connection waits in the kernel's backlog until another ends:
/// each open connection may hold a read buffer, so their number bounds the memory.
pub async fn serve<M, S>(
    listener: TcpListener,
    builder: http1::Builder,
    max_connections: usize,
    make_service: M,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> bool
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let places = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => place,
            () = &mut shutdown => break,
        };
        // Never closed.
        let Ok(place) = place else { break };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Responses are small and written at once: don't let Nagle hold them.
                    let _ = stream.set_nodelay(true);
                    let connection = builder.serve_connection(TokioIo::new(stream), make_service(peer));
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(error = %err, "connection closed with an error");
                        }
                        drop(place);
                    });
                }
                Err(err) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_ok()
}

/// `{"code": N, "message": "..."}` with `status` and `content-type: application/json`.
pub fn json(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "code": status.as_u16(), "message": message }).to_string();
    let mut response = text("application/json", body);
    *response.status_mut() = status;
    response
}

/// A 200 whose body is not the JSON shape (metrics, a document).
pub fn text(content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_answers_repeat_the_status_as_code() {
        use http_body_util::BodyExt;
        let response = json(StatusCode::NOT_FOUND, "Not found");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            value,
            serde_json::json!({"code": 404, "message": "Not found"})
        );
    }
}
