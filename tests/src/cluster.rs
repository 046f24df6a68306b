//! A three-node NATS cluster with JetStream on loopback, each node its own nats-server
//! process (the current one from .venv) with its own store, for tests that kill, freeze and
//! restart nodes under load.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::{free_port, latest_nats_server};

pub const NODES: usize = 3;

#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    config: PathBuf,
    child: Option<Child>,
}

#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl NatsCluster {
    /// Starts three clustered nodes and waits until JetStream has a meta leader.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("nats-cluster-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let ports: Vec<(u16, u16)> = (0..NODES).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (port, route))| {
                let name = format!("n{}", i + 1);
                let store = dir.join(&name);
                let config = dir.join(format!("{name}.conf"));
                // As deploy/cluster's nodes: every write synced before it is acknowledged.
                let text = format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                     cluster {{ name: reset-test, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    store.display(),
                    routes.join(", ")
                );
                std::fs::write(&config, text).expect("node config");
                Node {
                    name,
                    port: *port,
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self { nodes, dir };
        for i in 0..NODES {
            cluster.spawn(i);
        }
        for i in 0..NODES {
            cluster.wait_listening(i);
        }
        cluster.wait_for_meta_leader().await;
        cluster
    }

    /// Every node's client URL, comma-separated, as `NATS_URL` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client that may connect through any node, as the binaries' clients do.
    async fn client(&self) -> Option<async_nats::Client> {
        let servers: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .filter_map(|n| format!("nats://127.0.0.1:{}", n.port).parse().ok())
            .collect();
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(servers)
            .await
            .ok()
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = Command::new(latest_nats_server())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        node.child = Some(child);
    }

    fn wait_listening(&self, i: usize) {
        let port = self.nodes[i].port;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cluster node {} did not come up", self.nodes[i].name);
    }

    async fn wait_for_meta_leader(&self) {
        let began = Instant::now();
        loop {
            if let Some(client) = self.client().await
                && jetstream::new(client).query_account().await.is_ok()
            {
                return;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "JetStream on the cluster never became available"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Which node leads `stream` now.
    pub async fn leader(&self, stream: &str) -> usize {
        let began = Instant::now();
        loop {
            if let Some(i) = self.try_leader(stream).await {
                return i;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "stream {stream} has no leader"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn try_leader(&self, stream: &str) -> Option<usize> {
        let client = self.client().await?;
        let mut stream = jetstream::new(client).get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.clone()?;
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// Waits until `stream` exists with `replicas` copies and a leader.
    pub async fn wait_for_stream(&self, stream: &str, replicas: usize) {
        let began = Instant::now();
        loop {
            if let Some(client) = self.client().await
                && let Ok(mut s) = jetstream::new(client).get_stream(stream).await
                && let Ok(info) = s.info().await
                && info.config.num_replicas == replicas
                && info.cluster.as_ref().is_some_and(|c| c.leader.is_some())
            {
                return;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "stream {stream} never had {replicas} replicas and a leader"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// SIGKILL node `i`, and wait for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM node `i` (a clean stop), and wait for it to be gone.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    /// Starts node `i` again, on its port and store, and waits until it listens.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_listening(i);
    }

    /// SIGSTOP: the node freezes, as in a long pause or a stalled disk, its sockets open.
    pub fn freeze(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            signal(child, "STOP");
        }
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            signal(child, "CONT");
        }
    }
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status();
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
