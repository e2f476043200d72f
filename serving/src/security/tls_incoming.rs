//! Accepted TCP connections turned into TLS connections for tonic. Each handshake runs in its
//! own task with a timeout, so a slow or silent client holds up no one else; a refused
//! handshake (wrong CA, no or expired client certificate) is dropped, and logged (at most 5
//! lines per 10 s, with a count of those not logged).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, info, warn};

use crate::log_limit::LogLimit;
use crate::security::tls::ReloadingTls;

/// Longer than any honest handshake, short enough that idle sockets are not hoarded.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 64;
/// Refused handshakes logged: 5 per 10 s, then one line saying how many were left out.
static REFUSALS_LOGGED: LogLimit = LogLimit::new(Duration::from_secs(10), 5);

/// TLS connections over `tcp`, each with the configuration current when it arrived.
/// (tonic's `tls-connect-info` gives the server the client's certificates per request.)
pub fn tls_incoming(
    mut tcp: TcpIncoming,
    tls: Arc<ReloadingTls>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        while let Some(accepted) = tcp.next().await {
            if tx.is_closed() {
                break; // the server has stopped
            }
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    // e.g. out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                let acceptor = TlsAcceptor::from(tls.current());
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(connection)) => {
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Ok(Err(e)) => {
                        if let Some(left_out) = REFUSALS_LOGGED.allow(Instant::now()) {
                            info!(?peer, error = %e, refusals_not_logged = left_out, "TLS handshake refused");
                        }
                    }
                    Err(_) => debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
