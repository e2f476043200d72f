//! Serving one gRPC service with health and reflection until SIGTERM/SIGINT, then draining;
//! over TLS when --tls-cert is given, behind the authenticator when tokens or mTLS are on.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tracing::{error, info, warn};

use crate::config::ServiceArgs;
use crate::grpc_edge::GrpcEdgeLayer;
use crate::model_thread::LoadFailure;
use crate::runtime::ServiceParts;
use crate::security::auth::Authenticator;
use crate::security::tls_incoming::tls_incoming;

/// Idle connections are probed so dead peers (a pod gone, a NAT entry dropped) are noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the grace period: how long cut-off requests get to send their UNAVAILABLE, and
/// then connections to close, before the process exits anyway.
const CUT_OFF_WAIT: Duration = Duration::from_secs(2);

/// Serve `service` next to health and reflection. On SIGTERM/SIGINT: mark the service
/// NOT_SERVING, stop accepting connections and send every open connection an HTTP/2 GOAWAY
/// at once (clients move their new calls to other replicas; a call the GOAWAY overtakes is
/// refused with REFUSED_STREAM, which gRPC clients retry), let the calls already running
/// finish up to the grace period, end the rest with UNAVAILABLE and return Ok (the process
/// exits 0). When the model fails to load, return that error (the binary exits non-zero).
pub async fn serve<S>(
    args: &ServiceArgs,
    parts: ServiceParts,
    service: S,
    load_failure: LoadFailure,
) -> Result<(), String>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    // Both reflection versions: grpcurl and most tools speak v1, Python's grpcio-reflection,
    // Postman and older grpcurl only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(icae_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| format!("building reflection: {e}"))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| format!("building reflection: {e}"))?;
    let security = &args.security;
    let (authenticator, tls) = (parts.security.authenticator, parts.security.tls);
    let addr = format!("{}:{}", args.host, parts.ports.grpc);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    if let Some(port) = security.health_port {
        serve_plaintext_health(&args.host, port, parts.health.clone()).await?;
    }
    let readiness = parts.readiness;
    info!(
        address = %listener.local_addr().map_err(|e| e.to_string())?,
        service = readiness.service(),
        tls = tls.is_some(),
        client_certificates = security.tls_client_ca.is_some(),
        bearer_tokens = security.auth_tokens_file.is_some(),
        reflection = security.reflection,
        "listening"
    );
    if matches!(authenticator, Authenticator::Open) {
        info!("no authentication (no --auth-tokens-file, no --tls-client-ca): for trusted networks only");
    }
    // Streamed tokens are small writes: without TCP_NODELAY each could wait on Nagle.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<()>();
    let admission = parts.admission;
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal: draining");
        admission.drain();
        readiness.set_not_ready().await;
        // The GOAWAY goes out now, not when the work has ended: until clients get it they
        // keep sending new calls here.
        let _ = stop_tx.send(());
        if admission.wait_idle(grace).await {
            info!("in-flight requests finished");
        } else {
            warn!(
                grace_seconds = grace.as_secs(),
                in_flight = admission.in_flight(),
                "grace period over: ending the requests still in flight with UNAVAILABLE"
            );
            admission.cut_off();
            if !admission.wait_idle(CUT_OFF_WAIT).await {
                warn!(
                    in_flight = admission.in_flight(),
                    "requests did not end in time"
                );
            }
        }
        // Connections that do not close after the GOAWAY must not hold the exit either.
        tokio::time::sleep(CUT_OFF_WAIT).await;
        let _ = exit_tx.send(());
    });

    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT));
    if args.max_connection_age_seconds > 0 {
        // Long-lived HTTP/2 connections would pin clients to the pods that existed when
        // they connected: closing them after an age spreads load over pods added later.
        // No max_connection_age_grace: in tonic 0.14 a grace replaces the graceful GOAWAY
        // at that age by a forced close at age + grace, which would cut running streams.
        builder = builder.max_connection_age(Duration::from_secs(args.max_connection_age_seconds));
    }
    // Health and reflection stay outside authentication: probes carry no identity, and
    // reflection describes the public API only (--reflection false turns it off). The edge
    // layer gives the services' own status where the gRPC library would answer first.
    let router = builder
        .layer(GrpcEdgeLayer)
        .add_service(parts.health)
        .add_optional_service(security.reflection.then_some(reflection_v1))
        .add_optional_service(security.reflection.then_some(reflection_v1alpha))
        .add_service(InterceptedService::new(service, authenticator));
    let shutdown = async {
        let _ = stop_rx.await;
    };
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>>>> = match tls {
        Some(tls) => {
            Box::pin(router.serve_with_incoming_shutdown(tls_incoming(incoming, tls), shutdown))
        }
        None => Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown)),
    };
    tokio::select! {
        served = server => served.map_err(|e| {
            error!(error = %e, "server failed");
            e.to_string()
        }),
        Some(load_error) = load_failure.wait() => Err(format!("loading the model failed: {load_error}")),
        Ok(()) = exit_rx => {
            warn!("connections still open after the shutdown: closing them");
            Ok(())
        }
    }
}

/// grpc.health.v1 alone, in plaintext, for probes that cannot speak TLS (kubelet's gRPC
/// probes). It reveals only whether the process is up and ready.
async fn serve_plaintext_health(
    host: &str,
    port: u16,
    health: HealthServer<HealthService>,
) -> Result<(), String> {
    let addr = format!("{host}:{port}");
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("binding --health-port {addr}: {e}"))?;
    info!(address = %addr, "serving plaintext grpc.health.v1 for probes");
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await;
        if let Err(e) = served {
            error!(error = %e, "the health port failed");
        }
    });
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
