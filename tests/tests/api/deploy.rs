//! docker-compose files and NATS configs, checked statically (no Docker engine runs here):
//! they parse, every service can be built or pulled, the environment names only settings the
//! binaries have, URLs point at services that exist on the ports they listen on, and the
//! worker can be scaled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use e2e::compose::{self, root};
use e2e::latest_nats_server;
use e2e::system::settings_of as variables;
use serde_yaml::Value;

/// `.env` as `scripts/compose-env` writes it, with made-up values.
fn dot_env() -> BTreeMap<String, String> {
    let mut vars = compose::dot_env(|name| format!("{}-secret", name.to_lowercase()));
    vars.insert("API_KEYS".into(), "web:0123456789abcdef0123".into());
    vars
}

fn load(path: &Path) -> Value {
    compose::load(path, &dot_env()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

use compose::scalar as str_of;

fn check(compose_path: &Path, nats_services: &[&str]) {
    let compose = load(compose_path);
    let dir = compose_path.parent().expect("dir");
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().map(str_of).collect();
    for required in ["postgres", "mailpit", "api", "worker"] {
        assert!(
            names.contains(required),
            "{}: no {required} service",
            compose_path.display()
        );
    }
    let declared_volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(str_of).collect())
        .unwrap_or_default();

    for (name, service) in services {
        let name = str_of(name);
        let build = service.get("build");
        assert!(
            service.get("image").is_some() || build.is_some(),
            "{name} has neither image nor build"
        );
        if let Some(context) = build.and_then(Value::as_str) {
            assert!(
                dir.join(context).join("Dockerfile").exists(),
                "{name}: no Dockerfile in {context}"
            );
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let volume = str_of(volume);
            let source = volume.split(':').next().unwrap_or_default();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(dir.join(source).exists(), "{name}: {source} does not exist");
            } else {
                assert!(
                    declared_volumes.contains(source),
                    "{name}: volume {source} not declared"
                );
            }
        }
        for dependency in service["depends_on"]
            .as_mapping()
            .into_iter()
            .flat_map(|m| m.keys())
        {
            assert!(
                names.contains(&str_of(dependency)),
                "{name} depends on a missing service"
            );
        }
    }

    let env = |service: &str| -> Vec<(String, String)> {
        services[service]["environment"]
            .as_mapping()
            .expect("environment as a map")
            .iter()
            .map(|(k, v)| (str_of(k), str_of(v)))
            .collect()
    };
    for (service, known) in [("api", variables("api")), ("worker", variables("worker"))] {
        for (key, _) in env(service) {
            assert!(
                known.contains(&key),
                "{service}: {key} is not a setting of the {service} binary"
            );
        }
    }

    // The worker's stop ends by its own deadline, not by the SIGKILL that follows the grace
    // period; a second more than the deadline covers the process's exit.
    let worker_env = env("worker");
    let default = {
        use clap::Parser;
        let settings = worker::Settings::try_parse_from(["worker"]).expect("worker defaults");
        humantime::format_duration(settings.consume.shutdown_timeout).to_string()
    };
    let deadline = worker_env
        .iter()
        .find(|(key, _)| key == "WORKER_SHUTDOWN_TIMEOUT")
        .map_or(default.as_str(), |(_, value)| value.as_str());
    let grace = services["worker"]["stop_grace_period"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "{}: worker has no stop_grace_period",
                compose_path.display()
            )
        });
    let (deadline, grace) = (
        humantime::parse_duration(deadline).expect("WORKER_SHUTDOWN_TIMEOUT"),
        humantime::parse_duration(grace).expect("stop_grace_period"),
    );
    assert!(
        grace >= deadline + std::time::Duration::from_secs(1),
        "{}: stop_grace_period {grace:?} does not cover WORKER_SHUTDOWN_TIMEOUT {deadline:?}",
        compose_path.display()
    );

    // URLs point at services of this file, on the ports those services listen on.
    let host_port = |url: &str| -> (String, Option<u16>) {
        let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (
            parsed.host_str().unwrap_or_default().to_owned(),
            parsed.port(),
        )
    };
    for (service, vars) in [("api", env("api")), ("worker", env("worker"))] {
        for (key, value) in vars {
            match key.as_str() {
                "NATS_URL" => {
                    for url in value.split(',') {
                        let (host, port) = host_port(url.trim());
                        assert!(
                            nats_services.contains(&host.as_str()),
                            "{service}: NATS_URL host {host}"
                        );
                        assert_eq!(port, Some(4222));
                    }
                }
                "DATABASE_URL" => assert_eq!(host_port(&value), ("postgres".into(), Some(5432))),
                "SMTP_URL" => assert_eq!(host_port(&value), ("mailpit".into(), Some(1025))),
                "API_ADDR" => {
                    let port = value.rsplit(':').next().unwrap_or_default();
                    let published = services["api"]["ports"]
                        .as_sequence()
                        .expect("api ports")
                        .iter()
                        .any(|p| str_of(p).ends_with(&format!(":{port}")));
                    assert!(published, "API_ADDR port {port} is not published");
                }
                _ => {}
            }
        }
    }
    // Safe by default: every published port on loopback; each binary its own NATS user and
    // database role; the api has the database it completes resets with.
    for (name, service) in services {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = str_of(port);
            assert!(
                port.starts_with("127.0.0.1:"),
                "{}: {} publishes {port} beyond this machine by default",
                compose_path.display(),
                str_of(name)
            );
        }
    }
    let user_of = |service: &str, key: &str| -> Vec<String> {
        let vars = env(service);
        let value = vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{}: {service} has no {key}", compose_path.display()));
        value
            .split(',')
            .map(|url| {
                url::Url::parse(url.trim())
                    .map(|u| u.username().to_owned())
                    .unwrap_or_default()
            })
            .collect()
    };
    for url_user in user_of("api", "NATS_URL") {
        assert_eq!(url_user, "api");
    }
    for url_user in user_of("worker", "NATS_URL") {
        assert_eq!(url_user, "worker");
    }
    assert_eq!(user_of("api", "DATABASE_URL"), ["reset_api"]);
    assert_eq!(user_of("worker", "DATABASE_URL"), ["reset_worker"]);

    let worker = &services["worker"];
    assert!(
        worker.get("container_name").is_none(),
        "a container_name prevents --scale worker=3"
    );
    assert!(
        worker.get("ports").is_none(),
        "host ports prevent --scale worker=3"
    );
    assert_eq!(worker["command"][0], "worker");
    assert_eq!(services["api"]["command"][0], "api");
}

#[test]
fn docker_compose_is_consistent() {
    check(&root().join("docker-compose.yml"), &["nats"]);
}

#[test]
fn the_cluster_example_is_consistent_and_keeps_three_replicas() {
    let path = root().join("deploy/cluster/docker-compose.yml");
    check(&path, &["n1", "n2", "n3"]);
    let compose = load(&path);
    for service in ["api", "worker"] {
        assert_eq!(
            compose["services"][service]["environment"]["RESET_REPLICAS"],
            "3"
        );
    }
}

#[test]
fn the_nats_configs_are_valid_and_sync_every_write() {
    let configs = [
        root().join("deploy/nats.conf"),
        root().join("deploy/cluster/nats-1.conf"),
        root().join("deploy/cluster/nats-2.conf"),
        root().join("deploy/cluster/nats-3.conf"),
    ];
    for config in configs {
        // The images run 2.10+, which knows sync_interval (2.9 does not).
        let output = Command::new(latest_nats_server())
            .arg("-c")
            .arg(&config)
            .arg("-t")
            .envs(dot_env())
            .output()
            .expect("nats-server runs");
        assert!(
            output.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let text = std::fs::read_to_string(&config).expect("config");
        assert!(
            text.contains("sync_interval: always"),
            "{}",
            config.display()
        );
    }
}

#[test]
fn the_dockerfile_builds_both_binaries_and_ships_the_templates() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("--bin api --bin worker"));
    assert!(dockerfile.contains("COPY templates /app/templates"));
    assert!(dockerfile.contains("TEMPLATES_DIR=/app/templates"));
    assert!(dockerfile.contains("USER reset"), "runs unprivileged");
    assert!(
        dockerfile.starts_with("# syntax="),
        "the parser directive is read only on the first line"
    );
    assert!(
        !dockerfile.contains("WORKER_ADDR"),
        "the image opens no worker status port; deployments that need it say so"
    );
}

/// `COPY . .` copies the build context: the secrets the compose files read (`.env`) and the
/// local build outputs stay out of it.
#[test]
fn the_build_context_leaves_the_secrets_out() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for kept_out in [".env", ".env.*", "target", ".git", ".venv"] {
        assert!(
            patterns.contains(&kept_out),
            "{kept_out} is in the build context"
        );
    }
}

/// Without `.env` the compose files stop at the first secret with what to run; with the
/// `.env` that `scripts/compose-env` writes (private to its owner), they interpolate.
#[test]
fn the_compose_files_need_the_secrets_compose_env_makes() {
    for file in ["docker-compose.yml", "deploy/cluster/docker-compose.yml"] {
        let err = compose::load(&root().join(file), &BTreeMap::new()).expect_err("no secrets");
        assert!(
            err.contains("run scripts/compose-env first"),
            "{file}: {err}"
        );
    }
    let dir = std::env::temp_dir().join(format!("compose-env-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(dir.join("scripts")).expect("dir");
    std::fs::copy(
        root().join("scripts/compose-env"),
        dir.join("scripts/compose-env"),
    )
    .expect("copy");
    let status = Command::new("bash")
        .arg(dir.join("scripts/compose-env"))
        .status()
        .expect("compose-env runs");
    assert!(status.success());
    let written = std::fs::read_to_string(dir.join(".env")).expect(".env");
    let vars: BTreeMap<String, String> = written
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for file in ["docker-compose.yml", "deploy/cluster/docker-compose.yml"] {
        compose::load(&root().join(file), &vars).expect("interpolates with .env");
    }
    assert!(vars["API_KEYS"].parse::<api::http::auth::ApiKeys>().is_ok());
    assert!(
        vars["RESET_CODE_KEY"]
            .parse::<shared::code::CodeKey>()
            .is_ok()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(".env"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}
