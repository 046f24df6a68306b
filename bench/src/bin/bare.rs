//! The HTTP ceiling: parse the body, answer 200, publish nothing.
//! `bare [addr]` (default 127.0.0.1:8081).

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into())
        .parse()
        .map_err(std::io::Error::other)?;
    bench::serve(addr, |req| async move {
        match bench::parse(req).await {
            Ok(_) => api::http::reply::ok(),
            Err(response) => response,
        }
    })
    .await
}
