//! Reading settings from the environment: a bad value is reported by the variable people set,
//! not by the command-line flag it stands for.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};

/// Parses the settings from the environment and arguments, or exits with a message that
/// names the environment variable behind a refused value (`API_MAX_BODY=lots`), and what was
/// wrong with it.
pub fn parse<T: Parser>() -> T {
    match T::try_parse() {
        Ok(settings) => settings,
        Err(err) => match explain::<T>(&err) {
            Some(message) => {
                eprintln!("error: {message}");
                std::process::exit(2)
            }
            None => err.exit(),
        },
    }
}

/// For a refused value with an environment variable behind it: `API_MAX_BODY=lots: invalid
/// digit found in string (or --max-body)`.
fn explain<T: CommandFactory>(err: &clap::Error) -> Option<String> {
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(flag)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = flag.split_whitespace().next()?.strip_prefix("--")?;
    let command = T::command();
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))?;
    let variable = arg.get_env()?.to_string_lossy().into_owned();
    let value = match err.get(ContextKind::InvalidValue) {
        // A setting whose value --help hides (a URL with a password) is not echoed either.
        _ if arg.is_hide_env_values_set() => "<hidden>".to_owned(),
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    let why = match (
        std::error::Error::source(err),
        err.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => format!("use one of {}", valid.join(", ")),
        _ => "not a valid value".to_owned(),
    };
    Some(format!(
        "{variable}={value:?} is refused: {why} (or --{long})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Settings {
        #[arg(long, env = "TEST_SETTINGS_SIZE", default_value_t = 1)]
        size: usize,
        #[arg(long, env = "TEST_SETTINGS_MODE", default_value = "a")]
        mode: Mode,
        #[arg(long, env = "TEST_SETTINGS_FLAG", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
        flag: bool,
    }

    #[derive(Debug, Clone, clap::ValueEnum)]
    enum Mode {
        A,
        B,
    }

    fn refused(args: &[&str]) -> String {
        let err = Settings::try_parse_from(args).expect_err("refused");
        explain::<Settings>(&err).expect("explained")
    }

    #[test]
    fn a_refused_value_names_its_variable_and_why() {
        assert_eq!(
            refused(&["x", "--size", "lots"]),
            r#"TEST_SETTINGS_SIZE="lots" is refused: invalid digit found in string (or --size)"#
        );
        let mode = refused(&["x", "--mode", "c"]);
        assert!(
            mode.starts_with(r#"TEST_SETTINGS_MODE="c" is refused"#),
            "{mode}"
        );
    }

    #[test]
    fn booleans_accept_what_people_type() {
        for (typed, expected) in [
            ("1", true),
            ("0", false),
            ("yes", true),
            ("no", false),
            ("on", true),
            ("off", false),
            ("true", true),
            ("false", false),
        ] {
            let settings = Settings::try_parse_from(["x", "--flag", typed]).expect("accepted");
            assert_eq!(settings.flag, expected, "{typed}");
        }
        assert!(refused(&["x", "--flag", "maybe"]).starts_with("TEST_SETTINGS_FLAG="));
    }
}
