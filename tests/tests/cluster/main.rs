//! The system on a three-node JetStream cluster, apart from the rest: it runs three
//! nats-server processes of its own under load.

mod cluster_faults;
