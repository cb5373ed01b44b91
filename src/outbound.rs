//! Outbound HTTP: where the server may connect (public addresses only unless private
//! networks are allowed), which certificate authorities it trusts, and one bounded POST.
//! The delivery worker sends through it; the API checks an endpoint's address with it at
//! registration.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Bytes of a receiver's answer read at most: only its status matters.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Where deliveries may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destinations {
    /// Only public addresses: a tenant cannot aim the server at internal services.
    PublicOnly,
    /// Private, loopback and link-local addresses too (tests, private deployments).
    AnyAddress,
}

/// How the worker connects: where it may go, and which certificate authorities it trusts
/// for https endpoints.
#[derive(Clone)]
pub struct Outbound {
    pub destinations: Destinations,
    pub tls: Arc<tokio_rustls::rustls::ClientConfig>,
}

impl Outbound {
    /// Trusts the Mozilla root programme's authorities (compiled in, so a fresh machine
    /// needs no system store) and the certificates in `extra_roots_pem`, if any (a private
    /// CA, or a test's own).
    pub fn new(destinations: Destinations, extra_roots_pem: Option<&[u8]>) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_roots_pem {
            let mut added = 0;
            for certificate in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let certificate = certificate.map_err(|e| format!("a certificate that is not PEM: {e}"))?;
                roots
                    .add(certificate)
                    .map_err(|e| format!("a certificate that is not a CA's: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("no certificate in the file".into());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            destinations,
            tls: Arc::new(tls),
        })
    }
}

/// The URL's parts.
struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{url}: the scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    Ok(Target {
        https,
        host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
        port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        path: uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string()),
    })
}

/// The endpoint's URL may be delivered to: http, and (unless any address is allowed) a
/// host whose every address is public. The API checks this at registration; the worker
/// again before each connection (the DNS may have changed).
pub async fn check_destination(url: &str, destinations: Destinations) -> Result<SocketAddr, String> {
    let Target { host, port, .. } = parse_url(url)?;
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let first = *addresses.first().ok_or_else(|| format!("{host} has no address"))?;
    if destinations == Destinations::PublicOnly {
        if let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
            return Err(format!(
                "{host} resolves to {}, a private, loopback or reserved address (deliveries.allow_private_networks is off)",
                private.ip()
            ));
        }
    }
    Ok(first)
}

/// Not private, loopback, link-local, shared (CGNAT), benchmarking, documentation,
/// multicast or otherwise reserved; for IPv6 forms that carry an IPv4 address (mapped,
/// compatible, NAT64, 6to4), the IPv4 address is judged.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |high: u16, low: u16| {
                let [a, b] = high.to_be_bytes();
                let [c, d] = low.to_be_bytes();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d).
            if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return !v6.is_loopback() && !v6.is_unspecified() && is_public(embedded(segments[6], segments[7]));
            }
            // 6to4 (2002:a.b.c.d::/48).
            if segments[0] == 0x2002 {
                return is_public(embedded(segments[1], segments[2]));
            }
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// One HTTP/1.1 POST, over TLS for https; the answer's status code.
pub async fn post(
    url: &str,
    headers: Vec<(&'static str, String)>,
    body: String,
    outbound: &Outbound,
) -> Result<u16, String> {
    let target = parse_url(url)?;
    let address = check_destination(url, outbound.destinations).await?;
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let default_port = if target.https { 443 } else { 80 };
    let authority = if target.port == default_port {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut request = http::Request::post(target.path.as_str()).header(http::header::HOST, authority);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    if !target.https {
        return exchange(stream, request, address).await;
    }
    let name = rustls_pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| format!("{}: not a TLS server name: {e}", target.host))?;
    let tls = tokio_rustls::TlsConnector::from(outbound.tls.clone())
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS with {address}: {e}"))?;
    exchange(tls, request, address).await
}

/// Sends the request over an open connection; reads (a bounded part of) the answer, so that
/// the receiver's write completes.
async fn exchange<IO>(
    io: IO,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
    address: SocketAddr,
) -> Result<u16, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {address}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request to {address}: {e}"))?;
    let status = response.status().as_u16();
    let _ = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await;
    Ok(status)
}
