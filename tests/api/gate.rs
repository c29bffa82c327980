//! A TCP proxy between the service and the local RabbitMQ, to make the
//! broker look down, hung or back from the service's side only.

use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::net::{TcpListener, TcpStream};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const FROZEN: u8 = 2;

/// The proxy and its state: closed (every connection dropped at once), open
/// (bytes forwarded) or frozen (connections held, nothing forwarded — a
/// broker that stopped answering).
pub struct BrokerGate {
    pub url: String,
    state: Arc<AtomicU8>,
}

impl BrokerGate {
    /// A gate that starts closed.
    #[allow(dead_code)]
    pub async fn closed() -> BrokerGate {
        Self::start(CLOSED).await
    }

    /// A gate that starts open.
    pub async fn opened() -> BrokerGate {
        Self::start(OPEN).await
    }

    async fn start(initial: u8) -> BrokerGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(AtomicU8::new(initial));
        let gate = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if gate.load(Ordering::SeqCst) != CLOSED {
                    tokio::spawn(forward(client, gate.clone()));
                }
                // Closed: the connection is dropped at once.
            }
        });
        BrokerGate {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            state,
        }
    }

    /// Forwards from now on.
    pub fn open(&self) {
        self.state.store(OPEN, Ordering::SeqCst);
    }

    /// Holds every byte from now on, connections left open.
    pub fn freeze(&self) {
        self.state.store(FROZEN, Ordering::SeqCst);
    }
}

async fn forward(client: TcpStream, state: Arc<AtomicU8>) {
    let Ok(broker) = TcpStream::connect("127.0.0.1:5672").await else {
        return;
    };
    tokio::select! {
        _ = pump(&client, &broker, &state) => {}
        _ = pump(&broker, &client, &state) => {}
    }
}

/// Copies bytes from `from` to `to` until either side ends, holding them
/// while the gate is frozen.
async fn pump(from: &TcpStream, to: &TcpStream, state: &AtomicU8) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        from.readable().await?;
        while state.load(Ordering::SeqCst) == FROZEN {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let read = match from.try_read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < read {
            to.writable().await?;
            match to.try_write(&buffer[written..read]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
