// glibc's allocator spent about a tenth of the api's CPU in its own bookkeeping under load
// (malloc_consolidate, unlink_chunk); mimalloc's thread-local heaps avoid most of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings: api::Settings = shared::settings::parse();
    let _logs = shared::logging::init(&settings.log);
    let app = match api::Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("api cannot start: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    app.run_until(shared::shutdown_signal()).await;
    std::process::ExitCode::SUCCESS
}
