//! A three-node NATS cluster with JetStream on loopback, each node its own nats-server
//! process (the current one from .venv) with its own store, for tests that kill, freeze and
//! restart nodes under load.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::{free_port, latest_nats_server};

pub const NODES: usize = 3;

/// Node `i`'s name in its config, `n1` to `n3`; the stream info names its leader by it.
fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// A clustered node's config. As deploy/cluster's nodes: every write synced before it is
/// acknowledged.
fn node_config(
    name: &str,
    listen: &str,
    route_listen: &str,
    store: &std::path::Path,
    routes: &[String],
) -> String {
    format!(
        "server_name: {name}\nlisten: {listen}\n\
         jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
         cluster {{ name: reset-test, listen: {route_listen}, routes: [{}] }}\n",
        store.display(),
        routes.join(", ")
    )
}

/// A client that may connect through any of `urls`, as the binaries' clients do.
async fn connect_any(urls: &[String]) -> Option<async_nats::Client> {
    let servers: Vec<async_nats::ServerAddr> = urls.iter().filter_map(|u| u.parse().ok()).collect();
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(servers)
        .await
        .ok()
}

/// Waits until JetStream on the cluster answers, that is until it has a meta leader: a
/// minute, since two scenarios start their clusters side by side on two cores and an
/// election can take a while then; the scenarios begin only once it is done.
async fn wait_for_jetstream(urls: &[String]) {
    let began = Instant::now();
    loop {
        if let Some(client) = connect_any(urls).await
            && jetstream::new(client).query_account().await.is_ok()
        {
            return;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "JetStream on the cluster never became available"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which node leads `stream` now, waiting (at most 30 s) for it to have a leader.
async fn stream_leader(urls: &[String], stream: &str) -> usize {
    let began = Instant::now();
    loop {
        if let Some(client) = connect_any(urls).await
            && let Ok(mut s) = jetstream::new(client).get_stream(stream).await
            && let Ok(info) = s.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.as_ref())
            && let Some(i) = (0..NODES).find(|&i| *leader == node_name(i))
        {
            return i;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "stream {stream} has no leader"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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
                let name = node_name(i);
                let store = dir.join(&name);
                let config = dir.join(format!("{name}.conf"));
                let text = node_config(
                    &name,
                    &format!("127.0.0.1:{port}"),
                    &format!("127.0.0.1:{route}"),
                    &store,
                    &routes,
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
        self.url_list().join(",")
    }

    fn url_list(&self) -> Vec<String> {
        (0..NODES).map(|i| self.url(i)).collect()
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
        wait_for_jetstream(&self.url_list()).await;
    }

    /// Which node leads `stream` now.
    pub async fn leader(&self, stream: &str) -> usize {
        stream_leader(&self.url_list(), stream).await
    }

    /// Waits until `stream` exists with `replicas` copies and a leader.
    pub async fn wait_for_stream(&self, stream: &str, replicas: usize) {
        let began = Instant::now();
        loop {
            if let Some(client) = connect_any(&self.url_list()).await
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

/// Three clustered nodes, each in a network namespace of its own, joined by a bridge, so
/// that a test can cut one node off the others: the test's own namespace reaches each node
/// through the bridge (`10.X.0.i`), and each node's namespace also has a private link to the
/// test's (`10.X.1i.1`) that a cut leaves alone, for a process run beside the node. Needs
/// root and `ip` (iproute2).
#[derive(Debug)]
pub struct NetnsCluster {
    tag: String,
    subnet: u8,
    bridge: String,
    children: Vec<Child>,
    dir: PathBuf,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2) runs");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// A veth pair `host`–`inner` whose inner end is in `ns`, up, with `addr`/24.
fn veth_into(ns: &str, host: &str, inner: &str, addr: &str) {
    ip(&["link", "add", host, "type", "veth", "peer", "name", inner]);
    ip(&["link", "set", inner, "netns", ns]);
    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", inner]);
    ip(&["-n", ns, "link", "set", inner, "up"]);
}

impl NetnsCluster {
    pub async fn start() -> Self {
        let uid = Command::new("id").arg("-u").output().expect("id runs");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "network namespaces need root: run the cluster scenarios as root"
        );
        let id = uuid::Uuid::now_v7().simple().to_string();
        // Names and a subnet of this run's own, so that runs side by side do not meet.
        let tag = id[id.len() - 6..].to_owned();
        let subnet = 100 + (u8::from_str_radix(&tag[4..], 16).expect("hex") % 100);
        let bridge = format!("rb{tag}");
        let dir = std::env::temp_dir().join(format!("nats-netns-{id}"));
        std::fs::create_dir_all(&dir).expect("dir");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.{subnet}.0.254/24"),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        let mut cluster = Self {
            tag,
            subnet,
            bridge,
            children: Vec::new(),
            dir,
        };
        for i in 0..NODES {
            cluster.wire(i);
        }
        let routes: Vec<String> = (0..NODES)
            .map(|i| format!("nats-route://{}:6222", cluster.node_ip(i)))
            .collect();
        for i in 0..NODES {
            let name = node_name(i);
            let config = cluster.dir.join(format!("{name}.conf"));
            let store = cluster.dir.join(&name);
            let text = node_config(&name, "0.0.0.0:4222", "0.0.0.0:6222", &store, &routes);
            std::fs::write(&config, text).expect("config");
            let child = Command::new("ip")
                .args(["netns", "exec", &cluster.ns(i)])
                .arg(latest_nats_server())
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts in its namespace");
            cluster.children.push(child);
        }
        wait_for_jetstream(&cluster.url_list()).await;
        cluster
    }

    fn ns(&self, i: usize) -> String {
        format!("rn{}n{i}", self.tag)
    }

    /// The host end of node `i`'s link to the bridge: the one a cut takes down.
    fn cluster_link(&self, i: usize) -> String {
        format!("rc{}{i}", self.tag)
    }

    /// The host end of node `i`'s private link to the test's namespace.
    fn side_link(&self, i: usize) -> String {
        format!("rh{}{i}", self.tag)
    }

    /// The node's address on the bridge, from the test's namespace.
    pub fn node_ip(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.subnet, i + 1)
    }

    /// The address of node `i`'s namespace on its private link, from the test's namespace.
    pub fn side_ip(&self, i: usize) -> String {
        format!("10.{}.{}.1", self.subnet, 10 + i)
    }

    fn wire(&self, i: usize) {
        let ns = self.ns(i);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let (link, inner) = (self.cluster_link(i), format!("rd{}{i}", self.tag));
        veth_into(&ns, &link, &inner, &self.node_ip(i));
        ip(&["link", "set", &link, "master", &self.bridge]);
        ip(&["link", "set", &link, "up"]);
        let (link, inner) = (self.side_link(i), format!("ri{}{i}", self.tag));
        veth_into(&ns, &link, &inner, &self.side_ip(i));
        let near = format!("10.{}.{}.2/24", self.subnet, 10 + i);
        ip(&["addr", "add", &near, "dev", &link]);
        ip(&["link", "set", &link, "up"]);
    }

    /// Node `i`'s client URL on the bridge.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}:4222", self.node_ip(i))
    }

    fn url_list(&self) -> Vec<String> {
        (0..NODES).map(|i| self.url(i)).collect()
    }

    /// Every node's client URL, comma-separated.
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    /// Which node leads `stream` now.
    pub async fn leader(&self, stream: &str) -> usize {
        stream_leader(&self.url_list(), stream).await
    }

    /// A command run inside node `i`'s namespace (it reaches the node at 127.0.0.1:4222).
    pub fn command_beside(&self, i: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(i)]).arg(program);
        command
    }

    /// Cuts node `i` off the bridge: it and whatever runs beside it are the minority.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.cluster_link(i), "down"]);
    }

    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.cluster_link(i), "up"]);
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..NODES {
            // The links first: a namespace outlives its name while closing sockets in it
            // still wait out their time, and its links with it.
            for link in [self.cluster_link(i), self.side_link(i)] {
                let _ = Command::new("ip").args(["link", "del", &link]).status();
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
