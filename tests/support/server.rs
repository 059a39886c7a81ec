//! The in-process HTTP(S) server shared by the token server, the fault proxy and the blob
//! storage: a listener on `127.0.0.1:0` bound by the caller (so the address is known at once),
//! served by hyper (HTTP/1.1) on its own thread with its own tokio runtime, so that it works the
//! same from `#[test]` and `#[tokio::test]`. Dropping the [`Server`] stops it and joins the
//! thread. Also small body and query helpers.

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A running server; stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts serving `handler` on a fresh port of 127.0.0.1, with TLS when `tls` is given.
    pub fn start(name: &str, tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) -> Server {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for test server");
        listener
            .set_nonblocking(true)
            .expect("set test server listener non-blocking");
        let addr = listener.local_addr().expect("test server local address");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread_name = format!("test-server-{name}");
        let thread = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(thread_name)
                    .enable_all()
                    .build()
                    .expect("test server runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("tokio listener from std listener");
                    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                    loop {
                        let (stream, _) = tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => match accepted {
                                Ok(pair) => pair,
                                Err(_) => continue,
                            },
                        };
                        let handler = handler.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |req| {
                                let fut = handler(req);
                                async move { Ok::<_, std::convert::Infallible>(fut.await) }
                            });
                            let builder = hyper::server::conn::http1::Builder::new();
                            match acceptor {
                                Some(acceptor) => {
                                    if let Ok(tls_stream) = acceptor.accept(stream).await {
                                        let _ = builder
                                            .serve_connection(TokioIo::new(tls_stream), service)
                                            .await;
                                    }
                                }
                                None => {
                                    let _ = builder
                                        .serve_connection(TokioIo::new(stream), service)
                                        .await;
                                }
                            }
                        });
                    }
                });
                runtime.shutdown_background();
            })
            .expect("spawn test server thread");
        Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Wraps a handler closure into a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A response with a status, headers and a body.
pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(full(body)).expect("build test response")
}

/// `key=value` pairs of a query string or form body (percent-decoded, repeated keys kept).
pub fn parse_pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Lowercase hex SHA-256 with the `sha256:` prefix.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
