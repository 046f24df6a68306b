// glibc's allocator spent about a tenth of the api's CPU in its own bookkeeping under load
// (malloc_consolidate, unlink_chunk); mimalloc's thread-local heaps avoid most of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use worker::cli::{Cli, Command, CommandError};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli: Cli = shared::settings::parse();
    let _logs = if cli.command.is_some() {
        shared::logging::init_to_stderr(&cli.settings.log, cli.verbose)
    } else {
        shared::logging::init(&cli.settings.log)
    };
    let result: Result<(), CommandError> = match &cli.command {
        None => worker::run(cli.settings, shared::shutdown_signal())
            .await
            .map_err(CommandError::from),
        Some(Command::Replay(args)) => {
            worker::ops::replay(&cli.settings, args, &mut std::io::stdout())
                .await
                .map_err(CommandError::from)
        }
        Some(Command::DeadLetters(command)) => {
            worker::ops::dead_letters(&cli.settings, command, &mut std::io::stdout())
                .await
                .map_err(CommandError::from)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("worker failed: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
