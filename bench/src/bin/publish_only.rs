//! The "200 means durable" ceiling: parse the body, publish one JetStream message, await its
//! PubAck, answer 200. `publish-only [addr] [nats-url] [stream]`.

use std::sync::Arc;

use api::http::reply::ApiError;
use async_nats::jetstream;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, nats, stream) = bench::publish_args("127.0.0.1:8082", "BENCH_PUBLISH")?;
    let js = jetstream::new(async_nats::connect(nats).await?);
    let subject = format!("bench.{}.requested", stream.to_lowercase());
    js.create_stream(jetstream::stream::Config {
        name: stream,
        subjects: vec![subject.clone()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let state = Arc::new((js, subject));
    bench::serve(addr, move |req| {
        let state = state.clone();
        async move {
            let id = match bench::parse(req).await {
                Ok(id) => id,
                Err(response) => return response,
            };
            let (js, subject) = &*state;
            let payload = serde_json::json!({ "version": 1, "id": id }).to_string();
            match js.publish(subject.clone(), payload.into()).await {
                Ok(ack) => match ack.await {
                    Ok(_) => api::http::reply::ok(),
                    Err(_) => ApiError::Unavailable.into_response(),
                },
                Err(_) => ApiError::Unavailable.into_response(),
            }
        }
    })
    .await?;
    Ok(())
}
