//! The api's ceiling, written the way the libraries' docs show: parse the body, build an event
//! of the contract's shape, serialise it with serde_json (derive), publish it with its four
//! headers through `jetstream::Context::publish_with_headers` to a stream configured as the
//! api's, await the PubAck, answer 200. No key check, rate limit, metrics or log line.
//! `publish-event [addr] [nats-url] [stream]`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use api::reply::ApiError;
use async_nats::HeaderMap;
use shared::event::{ClientContext, EVENT_VERSION, RESET_REQUESTED, ResetRequested};
use shared::stream::{StreamSettings, ensure_stream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, nats, stream) = bench::publish_args("127.0.0.1:8083", "BENCH_EVENT")?;
    let settings = StreamSettings {
        subject_prefix: format!("bench.{}", stream.to_lowercase()),
        stream,
        // As `bench/run` starts the api.
        retention: Duration::from_secs(3600),
        replicas: 1,
    };
    let js = async_nats::jetstream::new(async_nats::connect(nats).await?);
    ensure_stream(&js, &settings).await?;
    let subject = settings.subjects().requested();
    bench::serve(addr, move |req| {
        let (js, subject) = (js.clone(), subject.clone());
        async move {
            let account = match bench::parse_account(req).await {
                Ok(account) => account,
                Err(response) => return response,
            };
            // What the api puts in the event for wrk's requests: its peer is 127.0.0.1, it
            // sends no User-Agent, and bench/run names its key `bench`.
            let client = ClientContext {
                ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                user_agent: None,
                api_key_label: "bench".into(),
            };
            let event = ResetRequested::new(account, uuid::Uuid::now_v7().to_string(), client);
            let Ok(payload) = serde_json::to_vec(&event) else {
                return ApiError::Unavailable.into_response();
            };
            let mut headers = HeaderMap::new();
            headers.insert("Event-Type", RESET_REQUESTED);
            headers.insert("Event-Version", EVENT_VERSION.to_string().as_str());
            headers.insert("Request-Id", event.request_id.as_str());
            headers.insert("Content-Type", "application/json");
            let stored = async {
                js.publish_with_headers(subject, headers, payload.into())
                    .await?
                    .await
            };
            match stored.await {
                Ok(_) => api::reply::ok(),
                Err(_) => ApiError::Unavailable.into_response(),
            }
        }
    })
    .await?;
    Ok(())
}
