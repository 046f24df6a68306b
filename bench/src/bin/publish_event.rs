//! Publish-only with the api's own event: parse the body, build the `ResetRequested` the api
//! would, publish it with its headers through the api's publisher to a stream configured as
//! the api's, await the PubAck, answer 200. No key check, rate limit, metrics or log line.
//! `publish-event [addr] [nats-url] [stream]`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use api::{publish::Publisher, reply::ApiError};
use shared::event::{ClientContext, ResetRequested};
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
    let client = async_nats::connect(nats).await?;
    let publisher = Publisher::new(
        client,
        settings.subjects().requested(),
        Duration::from_secs(3),
    );
    ensure_stream(publisher.jetstream(), &settings).await?;
    let publisher = Arc::new(publisher);
    bench::serve(addr, move |req| {
        let publisher = publisher.clone();
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
            // The request id as the api makes one (`to_string` would go through `core::fmt`).
            let mut text = uuid::Uuid::encode_buffer();
            let request_id = uuid::Uuid::now_v7()
                .hyphenated()
                .encode_lower(&mut text)
                .to_owned();
            let event = ResetRequested::new(account, request_id, client);
            match publisher.publish(&event, None).await {
                Ok(_) => api::reply::ok(),
                Err(_) => ApiError::Unavailable.into_response(),
            }
        }
    })
    .await?;
    Ok(())
}
