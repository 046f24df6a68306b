use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = worker::Settings::parse();
    shared::telemetry::init(&settings.log);
    match worker::run(settings, shared::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("worker failed: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
