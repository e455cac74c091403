//! The embedded development broker: librdkafka's mock cluster, reachable on a fixed address.
//!
//! The mock cluster listens on a random port. A tiny TCP forwarder on the fixed address relays
//! to it, and the mock broker advertises the fixed address in its metadata, so clients that
//! bootstrap through the forwarder keep using it. Everything is in memory: a restart loses all
//! messages and committed offsets, and each partition keeps only about 5 MiB (older data is
//! dropped silently). It is for development and tests, never for production.

use std::ffi::CString;
use std::net::SocketAddr;

use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Topics and their partition counts.
pub type TopicSpec = (String, i32);

#[derive(Debug, thiserror::Error)]
pub enum DevBrokerError {
    #[error("cannot start the mock cluster: {0}")]
    Mock(#[from] rdkafka::error::KafkaError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("mock cluster returned an unexpected bootstrap address {0:?}")]
    Bootstrap(String),
}

pub struct DevBroker {
    // Owns the mock cluster: the cluster lives exactly as long as this client.
    host: BaseProducer,
    addr: SocketAddr,
    forwarder: JoinHandle<()>,
}

/// The id librdkafka gives the first (and only) mock broker.
const BROKER_ID: i32 = 1;

impl DevBroker {
    /// Starts a one-broker mock cluster reachable at `listen` (port 0 picks a free port)
    /// and creates `topics`. Must be called inside a Tokio runtime.
    pub async fn start(listen: SocketAddr, topics: &[TopicSpec]) -> Result<Self, DevBrokerError> {
        let host: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            // The hosting client never produces; keep librdkafka quiet about the mock.
            .set("log_level", "3")
            .create()?;
        let bootstrap = mock_cluster(&host)?.bootstrap_servers();
        let upstream: SocketAddr = bootstrap.parse().map_err(|_| DevBrokerError::Bootstrap(bootstrap.clone()))?;
        let listener = TcpListener::bind(listen).await.map_err(|source| DevBrokerError::Listen { addr: listen, source })?;
        let addr = listener.local_addr().map_err(|source| DevBrokerError::Listen { addr: listen, source })?;
        advertise(&host, addr);
        let forwarder = tokio::spawn(forward(listener, upstream));
        let broker = Self { host, addr, forwarder };
        for (name, partitions) in topics {
            broker.create_topic(name, *partitions)?;
        }
        tracing::info!(%addr, %upstream, topics = ?topics, "dev broker listening");
        Ok(broker)
    }

    pub fn bootstrap_servers(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates another topic, e.g. for a test that wants its own.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), DevBrokerError> {
        Ok(mock_cluster(&self.host)?.create_topic(name, partitions, 1)?)
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

fn mock_cluster(host: &BaseProducer) -> Result<rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>, DevBrokerError> {
    host.client().mock_cluster().ok_or_else(|| DevBrokerError::Bootstrap("client has no mock cluster".into()))
}

fn advertise(host: &BaseProducer, addr: SocketAddr) {
    let ip = CString::new(addr.ip().to_string()).expect("an IP address has no NUL byte");
    // SAFETY: the mock cluster pointer belongs to `host`, which is alive for the call;
    // librdkafka copies the host string.
    unsafe {
        let cluster = rdkafka_sys::rd_kafka_handle_mock_cluster(host.client().native_ptr());
        assert!(!cluster.is_null(), "client was created with test.mock.num.brokers");
        rdkafka_sys::rd_kafka_mock_broker_set_host_port(cluster, BROKER_ID, ip.as_ptr(), i32::from(addr.port()));
    }
}

async fn forward(listener: TcpListener, upstream: SocketAddr) {
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "dev broker accept failed");
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let mut broker = match TcpStream::connect(upstream).await {
                Ok(stream) => stream,
                Err(error) => return tracing::warn!(%error, %peer, "dev broker cannot reach the mock cluster"),
            };
            let _ = broker.set_nodelay(true);
            // Ends when either side closes; errors are connection resets, normal for clients.
            let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
        });
    }
}
