//! The api's ceiling, written the way the libraries' docs show: parse the body, build an event
//! of the contract's shape, serialise it with serde_json (derive), publish it with its four
//! headers through `jetstream::Context::publish_with_headers` to a stream configured as the
//! api's, await the PubAck, answer 200 ([`bench::EventPublisher`]). No key check, rate limit,
//! metrics or log line. `publish-event [addr] [nats-url] [stream]`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, nats, stream) = bench::publish_args("127.0.0.1:8083", "BENCH_EVENT")?;
    let publisher = bench::EventPublisher::connect(nats, stream).await?;
    bench::serve(addr, move |req| {
        let publisher = publisher.clone();
        async move {
            match bench::parse_account(req).await {
                Ok(account) => publisher.publish(account).await,
                Err(response) => response,
            }
        }
    })
    .await?;
    Ok(())
}
