//! deploy/kubernetes, checked without a cluster: every manifest validates against the
//! Kubernetes schemas (kubernetes-validate, strict), each container gets only settings its
//! binary has and every one it needs, the probes and ports agree with the addresses the
//! binaries listen on, the secrets and config it names exist, and the worker's autoscaler
//! watches the stream and consumer the worker uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::compose::root;
use e2e::system::settings_of;
use serde::Deserialize;
use serde_yaml::Value;

const KUBERNETES_VERSION: &str = "1.30.0";

fn dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// Every document of a manifest file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The resources the kustomization applies, and the example secret.
fn manifests() -> Vec<PathBuf> {
    let kustomization = &documents(&dir().join("kustomization.yaml"))[0];
    let mut files: Vec<PathBuf> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| dir().join(r.as_str().expect("a file name")))
        .collect();
    files.push(dir().join("secret.example.yaml"));
    files
}

fn resources() -> Vec<Value> {
    manifests().iter().flat_map(|f| documents(f)).collect()
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn kubernetes_validate(files: &[PathBuf]) -> std::process::Output {
    let program = root().join(".venv/bin/kubernetes-validate");
    assert!(
        program.exists(),
        "no kubernetes-validate: run ./scripts/test (scripts/test-deps installs it)"
    );
    Command::new(program)
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("kubernetes-validate runs")
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let files = manifests();
    let output = kubernetes_validate(&files);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(!said.contains("ERROR"), "{said}");
    // The only kind it has no schema for is KEDA's, which the next test checks.
    for line in said.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(line.contains("kind ScaledObject"), "{line}");
    }

    // The same check refuses a manifest with a misspelt field.
    let broken = std::env::temp_dir().join(format!("api-{}.yaml", uuid::Uuid::now_v7().simple()));
    let text = std::fs::read_to_string(dir().join("api.yaml")).expect("api.yaml");
    std::fs::write(&broken, text.replacen("replicas: 2", "replica: 2", 1)).expect("write");
    let refused = kubernetes_validate(std::slice::from_ref(&broken));
    let _ = std::fs::remove_file(&broken);
    assert!(!refused.status.success(), "a misspelt field passed");
}

/// The environment a container gets: its own entries and its config maps' keys.
fn environment(all: &[Value], container: &Value) -> BTreeMap<String, Value> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let name = source["configMapRef"]["name"]
            .as_str()
            .expect("a config map");
        let map = find(all, "ConfigMap", name);
        for (key, value) in map["data"].as_mapping().expect("data") {
            env.insert(key.as_str().expect("key").to_owned(), value.clone());
        }
    }
    for entry in container["env"].as_sequence().into_iter().flatten() {
        let name = entry["name"].as_str().expect("name").to_owned();
        let value = if entry["value"].is_null() {
            entry["valueFrom"].clone()
        } else {
            entry["value"].clone()
        };
        env.insert(name, value);
    }
    env
}

fn port_of(addr: &Value) -> u64 {
    addr.as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("an address with a port")
}

#[test]
fn each_container_gets_what_its_binary_needs_and_nothing_else() {
    let all = resources();
    let secret = find(&all, "Secret", "password-reset");
    let cases = [
        (
            "api",
            "API_ADDR",
            &["API_KEYS", "RESET_CODE_KEY", "NATS_URL", "DATABASE_URL"][..],
            10,
        ),
        (
            "worker",
            "WORKER_ADDR",
            &[
                "RESET_CODE_KEY",
                "NATS_URL",
                "DATABASE_URL",
                "SMTP_URL",
                "RESET_URL",
                "MAIL_FROM",
            ][..],
            20,
        ),
    ];
    for (binary, addr_var, required, shutdown_secs) in cases {
        let deployment = find(&all, "Deployment", binary);
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["args"][0], binary, "{binary}: runs its binary");
        let env = environment(&all, container);
        let known = settings_of(binary);
        for name in env.keys() {
            assert!(
                known.contains(name),
                "{binary}: {name} is not a setting of it"
            );
        }
        for name in required {
            assert!(env.contains_key(*name), "{binary}: {name} is missing");
        }
        assert_eq!(
            env["RESET_REPLICAS"], "3",
            "{binary}: the stream keeps three copies"
        );
        // Secrets come from keys the secret has.
        for value in env.values() {
            if let Some(key) = value["secretKeyRef"]["key"].as_str() {
                assert_eq!(value["secretKeyRef"]["name"], "password-reset");
                assert!(
                    !secret["stringData"][key].is_null(),
                    "{binary}: the secret has no {key}"
                );
            }
        }
        // Probes on the port the binary listens on.
        let port = port_of(&env[addr_var]);
        let ports = container["ports"].as_sequence().expect("ports");
        assert_eq!(
            ports[0]["containerPort"].as_u64(),
            Some(port),
            "{binary}: port"
        );
        let port_name = &ports[0]["name"];
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(
                container[probe]["httpGet"]["path"], path,
                "{binary}: {probe}"
            );
            assert_eq!(
                &container[probe]["httpGet"]["port"], port_name,
                "{binary}: {probe}"
            );
        }
        // The platform waits longer than the binary's own stop takes.
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace period");
        assert!(grace > shutdown_secs, "{binary}: grace {grace} s");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert!(!container["resources"]["requests"]["memory"].is_null());
        assert!(!container["resources"]["limits"]["memory"].is_null());
        // A disruption budget covers it.
        let budget = find(&all, "PodDisruptionBudget", binary);
        assert_eq!(
            budget["spec"]["selector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"]
        );
    }
}

#[test]
fn the_worker_scales_on_the_backlog_of_its_own_consumer() {
    let all = resources();
    let scaled = find(&all, "ScaledObject", "worker");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    let spec = &scaled["spec"];
    assert_eq!(spec["scaleTargetRef"]["name"], "worker");
    let (min, max) = (
        spec["minReplicaCount"].as_u64().expect("min"),
        spec["maxReplicaCount"].as_u64().expect("max"),
    );
    assert!(min >= 1 && max > min, "replicas {min}..{max}");
    let triggers = spec["triggers"].as_sequence().expect("triggers");
    assert_eq!(triggers.len(), 1);
    assert_eq!(triggers[0]["type"], "nats-jetstream");
    let metadata = triggers[0]["metadata"].as_mapping().expect("metadata");
    // The scaler's documented parameters, all strings.
    let known: BTreeSet<&str> = [
        "natsServerMonitoringEndpoint",
        "account",
        "stream",
        "consumer",
        "lagThreshold",
        "activationLagThreshold",
        "useHttps",
    ]
    .into();
    for (key, value) in metadata {
        let key = key.as_str().expect("key");
        assert!(
            known.contains(key),
            "{key} is not a nats-jetstream parameter"
        );
        assert!(value.is_string(), "{key} must be a string");
    }
    let worker = find(&all, "Deployment", "worker");
    let env = environment(&all, &worker["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(metadata["stream"], env["RESET_STREAM"]);
    assert_eq!(metadata["consumer"], env["RESET_CONSUMER"]);
    // The account the scaler reads is the one the NATS users live in.
    let accounts = std::fs::read_to_string(root().join("deploy/nats-accounts.conf")).expect("conf");
    let account = metadata["account"].as_str().expect("account");
    assert!(
        accounts.contains(&format!("  {account} {{")),
        "no account {account}"
    );
    // And NATS runs three JetStream nodes for the three replicas.
    let values = &documents(&dir().join("nats-values.yaml"))[0];
    assert_eq!(values["config"]["cluster"]["replicas"], 3);
    assert_eq!(values["config"]["jetstream"]["enabled"], true);
}

/// Clients reach the api through the ingress controller alone, and only its X-Forwarded-For
/// is believed: the api's network policy admits the controller (and the scraper), and the
/// trusted proxies are the operator's to name, not a whole pod network.
#[test]
fn only_the_ingress_reaches_the_api_and_only_it_is_believed() {
    let all = resources();
    let policy = find(&all, "NetworkPolicy", "api");
    let rules = policy["spec"]["ingress"]
        .as_sequence()
        .expect("ingress rules");
    assert_eq!(rules.len(), 1, "one rule, with its sources listed");
    let sources = rules[0]["from"].as_sequence().expect("sources");
    let namespaces: Vec<&str> = sources
        .iter()
        .filter_map(|s| {
            s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str()
        })
        .collect();
    assert_eq!(namespaces, ["ingress-nginx", "monitoring"]);
    assert!(
        sources[0]["podSelector"]["matchLabels"].is_mapping(),
        "the controller's pods, not its whole namespace"
    );
    let api = find(&all, "Deployment", "api");
    let env = environment(&all, &api["spec"]["template"]["spec"]["containers"][0]);
    let trusted = env["API_TRUSTED_PROXIES"].as_str().expect("a string");
    assert!(
        trusted.parse::<api::http::limit::TrustedProxies>().is_err(),
        "{trusted}: the operator names the ingress's addresses before the api starts"
    );
}
